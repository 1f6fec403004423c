#pragma once
/// \file
/// NKD — Normalized Knowledge Distillation (Yang et al., ICCV 2023, "From Knowledge
/// Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and
/// Customized Soft Labels", arXiv:2303.13005): the KD loss split into the target class and the
/// normalised non-target classes.
///
/// Per token row with target index y (given, e.g. the label, or the teacher's argmax — the
/// LLM form), teacher logits v and student logits z:
///
///     L = −p_y · log q_y − γ·τ²·Σ_{i≠y} p̃_i log q̃_i
///
/// where p = softmax(v), q = softmax(z) at temperature 1 (the target term), and p̃, q̃ are the
/// softmax over the non-target entries only of v/τ and z/τ (the normalised non-target
/// distributions). The teacher's p_y is a constant weight. Gradient w.r.t. z:
///
///     ∂L/∂z_j = p_y (q_j − [j = y]) + [j ≠ y] γ τ (q̃_j − p̃_j).
///
/// Defaults γ = 1.5, τ = 1 (the paper's / its reference code's). Deliberate difference: none
/// in the formula; rows and aggregation follow divergences.hpp (the reference code averages
/// over the batch, i.e. token-mean). Not a divergence: L(p, p) ≠ 0.
///
/// Metrics: `nkd_loss` (mean L), `nkd_target_loss` (mean −p_y log q_y).
///
/// **Bad input**: targets not N entries or outside [0, V) (unmasked rows); γ < 0; τ < 1e−4 or not finite;
/// V = 0 ("logits: V = 0") or V = 1 with rows (`[0, V]` is an empty batch);
/// the per-row logit errors of divergences.hpp; an infinite loss (q_y = 0 with p_y > 0, or a
/// non-target entry the student excludes and the teacher does not). The value and metrics
/// are checked finite at the end (rlpo::numerical_error otherwise).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <cmath>
#include <optional>
#include <vector>

namespace rlpo::distill {

struct NKDOptions {
    double gamma = 1.5;        ///< γ ≥ 0, weight of the non-target term
    double temperature = 1.0;  ///< τ > 0 of the non-target term (scaled by τ²)
};

namespace detail {

/// Numerically stable log-softmax statistics over the entries j ≠ skip of x/τ (double).
/// A log-sum-exp of x/τ kept as its parts, the raw maximum m and log Σ e^((x − m)/τ), so that
/// a log-probability is (x − m)/τ − log Σ: no rounding relative to large logits (x/τ − lse
/// would cancel two numbers of the logits' size).
struct Lse {
    double m, ls, invT;
    template <class A>
    double logp(A x) const {
        return (static_cast<double>(x) - m) * invT - ls;
    }
};

template <class A>
inline Lse lse_except(const A* x, Index V, Index skip, double invT) {
    double m = -std::numeric_limits<double>::infinity();
    for (Index j = 0; j < V; ++j)
        if (j != skip) m = std::max(m, static_cast<double>(x[j]));
    if (m == -std::numeric_limits<double>::infinity()) return {m, 0.0, invT};
    double s = 0.0;
    for (Index j = 0; j < V; ++j)
        if (j != skip && x[j] > -std::numeric_limits<A>::infinity())
            s += std::exp((static_cast<double>(x[j]) - m) * invT);
    return {m, std::log(s), invT};
}

template <class S, class A>
inline double nkd_row(const NKDOptions& o, Index yt, const A* z, const A* v, Index V,
                      Scratch<A>& ws, const GradRow<S>& rg, RowError& err, double& target_loss) {
    check_row(z, V, "student_logits", err);
    if (err.set()) return 0.0;
    check_row(v, V, "teacher_logits", err);
    if (err.set()) return 0.0;
    const double invT = 1.0 / o.temperature;
    const double ninf = -std::numeric_limits<double>::infinity();
    const Lse lz = lse_except(z, V, -1, 1.0), lv = lse_except(v, V, -1, 1.0);
    const double py = std::exp(lv.logp(v[yt]));
    const double lqy = lz.logp(z[yt]);
    const Lse lzn = lse_except(z, V, yt, invT), lvn = lse_except(v, V, yt, invT);
    if (lvn.m == ninf || lzn.m == ninf) {
        err = {"inputs", "every non-target logit is -inf (no non-target distribution)", -1};
        return 0.0;
    }
    target_loss = py > 0 ? -py * lqy : 0.0;
    double ce = 0.0;  // −Σ p̃ log q̃
    A* gr = ws.a.data();
    for (Index j = 0; j < V; ++j) {
        const double zj = static_cast<double>(z[j]), vj = static_cast<double>(v[j]);
        const double q = zj == ninf ? 0.0 : std::exp(lz.logp(zj));
        double gj = py * (q - (j == yt ? 1.0 : 0.0));
        if (j != yt) {
            const double pt = vj == ninf ? 0.0 : std::exp(lvn.logp(vj));
            const double qt = zj == ninf ? 0.0 : std::exp(lzn.logp(zj));
            if (pt > 0) ce -= pt * lzn.logp(zj);
            gj += o.gamma * o.temperature * (qt - pt);
        }
        gr[j] = static_cast<A>(gj);
    }
    const double L = target_loss + o.gamma * o.temperature * o.temperature * ce;
    if (!std::isfinite(L)) return L;
    rg.set(ArrMap<A>(gr, V));
    return L;
}

}  // namespace detail

/// NKD loss; `targets` (N entries, any numeric type holding integer indices) or, when empty,
/// the teacher's argmax per row. Gradient w.r.t. `student_logits`.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> nkd(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const std::vector<Index>& targets = {},
    const NKDOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    using A = detail::acc_t<S>;
    constexpr const char* fn = "distill::nkd";
    const detail::LogitPair<DS, DT> in(fn, student_logits, teacher_logits);
    const ConstMatRef<S>&z = in.z, &v = in.y;
    ::rlpo::detail::check_nonnegative(fn, "gamma", opts.gamma);
    detail::check_temperature(fn, opts.temperature);
    detail::check_scale(fn, "temperature", opts.gamma * opts.temperature * opts.temperature);
    const Index N = z.rows(), V = z.cols();
    RLPO_CHECK(V >= 2 || N == 0, fn, "student_logits: need at least 2 vocabulary entries, given ",
               V);
    const detail::RowPlan plan = detail::plan_rows(fn, N, mask, norm);
    if (!targets.empty()) {
        RLPO_CHECK(static_cast<Index>(targets.size()) == N, fn, "targets: expected ", N,
                   " entries (rows of student_logits), given ", targets.size());
        for (Index n = 0; n < N; ++n)
            if (plan.m[static_cast<std::size_t>(n)] != 0)
                RLPO_CHECK(targets[static_cast<std::size_t>(n)] >= 0 &&
                               targets[static_cast<std::size_t>(n)] < V,
                           fn, "targets: ", targets[static_cast<std::size_t>(n)], " at row ", n,
                           " is not a vocabulary index in [0, ", V, ")");
    }
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    const auto pass = detail::drive_rows<S, A>(
        fn, plan, N, V, g, 1.0,
        [&](Index n, detail::Scratch<A>& ws, const detail::GradRow<S>& rg, detail::RowError& err,
            double& aux) -> double {
            const A* zr = detail::widen<A, S>(z, n, ws.z);
            const A* vr = detail::widen<A, S>(v, n, ws.y);
            Index yt = 0;
            if (targets.empty()) {
                A best = vr[0];
                for (Index j = 1; j < V; ++j)
                    if (vr[j] > best) best = vr[j], yt = j;  // first maximum
            } else {
                yt = targets[static_cast<std::size_t>(n)];
            }
            return detail::nkd_row<S, A>(opts, yt, zr, vr, V, ws, rg, err, aux);
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("nkd_loss", pass.metric, pass.count);
    res.metrics.add("nkd_target_loss", pass.aux, pass.count);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::distill
