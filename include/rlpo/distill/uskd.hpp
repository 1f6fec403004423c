#pragma once
/// \file
/// USKD — Universal Self-Knowledge Distillation, the teacher-free half of the NKD paper (Yang
/// et al., ICCV 2023, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
/// Approach with Normalized Loss and Customized Soft Labels", arXiv:2303.13005; the authors'
/// reference code is `USKDLoss` in yzd-v/cls_KD). Where NKD (nkd.hpp) takes the soft labels
/// from a teacher, USKD makes them from the student itself: the target label from the
/// student's own (squared, batch-centred) target probability, the non-target labels from
/// Zipf's law over a ranking of the classes. A weak auxiliary head (a linear classifier on an
/// intermediate feature in the paper) adds a label-smoothed cross-entropy and sharpens that
/// ranking.
///
/// Per token row n with target index y, student logits z (s = softmax z) and, optionally, the
/// weak head's logits u (w = softmax u):
///
///     p_y   = s_y² + 1 − mean_rows(s_y²)                      (a constant: no gradient)
///     r_j   = w_j / (1 − w_y + 10⁻⁶) + log s_j / (1 − log s_y + 10⁻⁶)   (w-term 0 without u)
///     k_j   = the position of j when the V scores r are sorted in descending order (0-based)
///     ẑ_j   = (1/(k_j + 1)) / Σ_{i≠y} 1/(k_i + 1)              (Zipf labels over j ≠ y)
///     L_n   = α·(−p_y log s_y) + β·(−Σ_{j≠y} ẑ_j log s̃_j),    s̃ = softmax of z over j ≠ y
///
/// Gradient w.r.t. z (p_y and the ranking are constants, as the reference code detaches
/// them): ∂L_n/∂z_j = α p_y (s_j − [j = y]) + β [j ≠ y] (s̃_j − ẑ_j).
///
/// `uskd_weak` is the weak head's term, with its own gradient (w.r.t. u):
///
///     L_n^weak = −μ Σ_j t_j log w_j,  t = (1 − ε_ls)·onehot(y) + ε_ls / V;   ∂/∂u_j = μ (w_j − t_j).
///
/// The full USKD loss of the paper is `uskd(...) + uskd_weak(...)` (compose them with
/// `add_to` gradients, or call both). Rows and aggregation follow divergences.hpp (the
/// reference code averages over the batch: token-mean).
///
/// **Defaults** α = 1, β = 0.1, μ = 0.005, ε_ls = 0.1: the reference code's constructor
/// defaults. The ranking adds 10⁻⁶ to its denominators, as the reference code does (the
/// log-probability term of r_j is the reference code's: it ranks by log s_j, rescaled).
///
/// **The batch mean of s_y²** is a statistic of the whole batch. By default it is the
/// mask-weighted mean over this call's unmasked rows — what the reference code computes on
/// each device's batch. For micro-batches that must add up to one batch, pass the mean over
/// the whole batch as `USKDOptions::target_sq_mean` (the metric `uskd_target_sq` of each part
/// is a mean that merges exactly: a first pass, or the previous step's value, gives it).
///
/// **Ties** in the ranking are broken by vocabulary index (the lower index ranks first); the
/// reference code's `torch.sort` does not specify an order for ties.
///
/// **Cost**: a sort of the V scores per row (O(V log V)), as in the reference code, and a
/// second pass over the logits for the batch mean. Allocates: two per-thread buffers of V
/// doubles and V indices (kept for the thread's next call), and two `N`-entry vectors.
///
/// Metrics: `uskd_loss` (mean L_n), `uskd_target_loss` (mean −p_y log s_y), `uskd_target_sq`
/// (mean s_y² over the rows of this call); `uskd_weak`: `uskd_weak_loss` (mean L_n^weak).
///
/// **Bad input**: targets not N entries or outside [0, V) on unmasked rows; α, β, μ < 0;
/// ε_ls outside [0, 1]; `target_sq_mean` outside [0, 1]; V < 2; weak logits of another shape;
/// the per-row logit errors of divergences.hpp (NaN, +inf, an all −inf row); and a −inf
/// student logit (the Zipf labels give every non-target entry mass, and the target term needs
/// s_y > 0: the loss would be infinite), or a −inf weak logit at the target or, with ε_ls > 0,
/// anywhere.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/distill/nkd.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

namespace rlpo::distill {

struct USKDOptions {
    double alpha = 1.0;           ///< α ≥ 0, weight of the target term
    double beta = 0.1;            ///< β ≥ 0, weight of the Zipf non-target term
    double mu = 0.005;            ///< μ ≥ 0, weight of the weak head's term (`uskd_weak`)
    double weak_smoothing = 0.1;  ///< ε_ls ∈ [0, 1], label smoothing of the weak head's target
    std::optional<double> target_sq_mean;  ///< the batch mean of s_y² (default: this call's)
};

namespace detail {

inline void validate_uskd(const char* fn, const USKDOptions& o) {
    ::rlpo::detail::check_nonnegative(fn, "alpha", o.alpha);
    ::rlpo::detail::check_nonnegative(fn, "beta", o.beta);
    ::rlpo::detail::check_nonnegative(fn, "mu", o.mu);
    RLPO_CHECK(std::isfinite(o.weak_smoothing) && o.weak_smoothing >= 0 && o.weak_smoothing <= 1,
               fn, "weak_smoothing: must be in [0, 1], given ", o.weak_smoothing);
    if (o.target_sq_mean)
        RLPO_CHECK(
            std::isfinite(*o.target_sq_mean) && *o.target_sq_mean >= 0 && *o.target_sq_mean <= 1,
            fn, "target_sq_mean: must be in [0, 1] (a mean of squared probabilities), given ",
            *o.target_sq_mean);
}

/// The targets of the unmasked rows: N entries in [0, V).
inline void check_targets(const char* fn, const std::vector<Index>& targets, const RowPlan& plan,
                          Index N, Index V) {
    RLPO_CHECK(static_cast<Index>(targets.size()) == N, fn, "targets: expected ", N,
               " entries (rows of the logits), given ", targets.size());
    for (Index n = 0; n < N; ++n) {
        const auto k = static_cast<std::size_t>(n);
        if (plan.m[k] != 0)
            RLPO_CHECK(targets[k] >= 0 && targets[k] < V, fn, "targets: ", targets[k], " at row ",
                       n, " is not a vocabulary index in [0, ", V, ")");
    }
}

/// First −inf column of a row, or −1.
template <class A>
inline Index first_neg_inf(const A* x, Index V) {
    for (Index j = 0; j < V; ++j)
        if (x[j] == -std::numeric_limits<A>::infinity()) return j;
    return -1;
}

/// Per-thread buffers of the ranking (kept between calls: no allocation per row).
struct RankBuffers {
    std::vector<double> score, zipf;
    std::vector<Index> order;
    void ensure(Index V) {
        const auto n = static_cast<std::size_t>(V);
        if (score.size() != n) {
            score.resize(n);
            zipf.resize(n);
            order.resize(n);
        }
    }
};
inline RankBuffers& rank_buffers() {
    thread_local RankBuffers b;
    return b;
}

}  // namespace detail

/// USKD's student term (target + Zipf non-target); gradient w.r.t. `student_logits` `[N, V]`.
/// `weak_logits` (`[N, V]`, the same scalar type, or a 0 × 0 matrix for none) only sharpen the
/// ranking and get no gradient here (see `uskd_weak`). `targets`: N indices (any masked row's
/// entry is ignored).
template <class DS, class DW, class DM>
Result<::rlpo::detail::scalar_t<DS>> uskd(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DW>& weak_logits,
    const Eigen::MatrixBase<DM>& mask, const std::vector<Index>& targets,
    const USKDOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    using A = detail::acc_t<S>;
    static_assert(detail::is_logit_scalar_v<S>,
                  "rlpo::distill: logits must be float, double or Eigen::bfloat16");
    static_assert(std::is_same<S, ::rlpo::detail::scalar_t<DW>>::value,
                  "rlpo::distill::uskd: weak and student logits must have the same scalar type");
    constexpr const char* fn = "distill::uskd";
    const ConstMatRef<S> z(student_logits.derived());
    const ConstMatRef<S> u(weak_logits.derived());
    const Index N = z.rows(), V = z.cols();
    const bool has_weak = u.size() != 0 || u.rows() != 0;
    if (has_weak) ::rlpo::detail::check_same_shape(fn, "weak_logits", u, "student_logits", z);
    detail::validate_uskd(fn, opts);
    RLPO_CHECK(V >= 2, fn, "student_logits: need at least 2 vocabulary entries, given ", V);
    const detail::RowPlan plan = detail::plan_rows(fn, N, mask, norm);
    detail::check_targets(fn, targets, plan, N, V);

    // Pass 1: log Σ exp z per row and s_y² (rows whose logits are bad are left out here and
    // reported by pass 2).
    std::vector<double> lse(static_cast<std::size_t>(N), 0.0), sq(static_cast<std::size_t>(N), 0.0);
    ::rlpo::detail::parallel_for(N, N * V > 32768 && N > 1, [&](Index n) {
        const auto k = static_cast<std::size_t>(n);
        if (plan.m[k] == 0) return;
        const S* zr = z.row(n).data();
        double mx = -std::numeric_limits<double>::infinity();
        bool bad = false;
        for (Index j = 0; j < V; ++j) {
            const double x = static_cast<double>(zr[j]);
            if (!std::isfinite(x)) bad = true;
            mx = std::max(mx, x);
        }
        if (bad) return;
        double s = 0.0;
        for (Index j = 0; j < V; ++j) s += std::exp(static_cast<double>(zr[j]) - mx);
        lse[k] = mx + std::log(s);
        const double sy = std::exp(static_cast<double>(zr[targets[k]]) - lse[k]);
        sq[k] = sy * sy;
    });
    double sq_sum = 0.0;
    for (Index n = 0; n < N; ++n)
        sq_sum += plan.m[static_cast<std::size_t>(n)] * sq[static_cast<std::size_t>(n)];
    double mask_sum = 0.0;
    for (double mv : plan.m) mask_sum += mv;
    const double mean_sq =
        opts.target_sq_mean ? *opts.target_sq_mean : (mask_sum > 0 ? sq_sum / mask_sum : 0.0);

    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    const auto pass = detail::drive_rows<S, A>(
        fn, plan, N, V, g, 1.0,
        [&](Index n, detail::Scratch<A>& ws, const detail::GradRow<S>& rg, detail::RowError& err,
            double& target_loss) -> double {
            const auto k = static_cast<std::size_t>(n);
            const A* zr = detail::widen<A, S>(z, n, ws.z);
            detail::check_row(zr, V, "student_logits", err);
            if (err.set()) return 0.0;
            if (const Index c = detail::first_neg_inf(zr, V); c >= 0) {
                err = {"student_logits",
                       "-inf logit (USKD's labels give every entry mass: the loss is infinite)", c};
                return 0.0;
            }
            const A* ur = nullptr;
            if (has_weak) {
                ur = detail::widen<A, S>(u, n, ws.y);
                detail::check_row(ur, V, "weak_logits", err);
                if (err.set()) return 0.0;
            }
            const Index y = targets[k];
            const double lz = lse[k];
            const double lsy = static_cast<double>(zr[y]) - lz;
            const double py = sq[k] + 1.0 - mean_sq;
            // The ranking scores and the Zipf labels.
            detail::RankBuffers& rb = detail::rank_buffers();
            rb.ensure(V);
            const double ds = 1.0 - lsy + 1e-6;
            detail::Lse lu{0.0, 0.0, 1.0};
            double dw = 1.0;
            if (ur) {
                lu = detail::lse_except(ur, V, -1, 1.0);
                dw = 1.0 - std::exp(lu.logp(ur[y])) + 1e-6;
            }
            for (Index j = 0; j < V; ++j) {
                double r = (static_cast<double>(zr[j]) - lz) / ds;
                if (ur) r += std::exp(lu.logp(ur[j])) / dw;
                rb.score[static_cast<std::size_t>(j)] = r;
            }
            std::iota(rb.order.begin(), rb.order.end(), Index(0));
            std::stable_sort(rb.order.begin(), rb.order.end(), [&](Index a, Index b) {
                return rb.score[static_cast<std::size_t>(a)] >
                       rb.score[static_cast<std::size_t>(b)];
            });
            double zsum = 0.0;
            for (Index pos = 0; pos < V; ++pos) {
                const Index j = rb.order[static_cast<std::size_t>(pos)];
                const double zw = 1.0 / static_cast<double>(pos + 1);
                rb.zipf[static_cast<std::size_t>(j)] = zw;
                if (j != y) zsum += zw;
            }
            const detail::Lse lzn = detail::lse_except(zr, V, y, 1.0);
            double non = 0.0;
            A* gr = ws.a.data();
            for (Index j = 0; j < V; ++j) {
                const double zj = static_cast<double>(zr[j]);
                double gj = opts.alpha * py * (std::exp(zj - lz) - (j == y ? 1.0 : 0.0));
                if (j != y) {
                    const double zh = rb.zipf[static_cast<std::size_t>(j)] / zsum;
                    non -= zh * lzn.logp(zj);
                    gj += opts.beta * (std::exp(lzn.logp(zj)) - zh);
                }
                gr[j] = static_cast<A>(gj);
            }
            target_loss = -py * lsy;
            const double L = opts.alpha * target_loss + opts.beta * non;
            if (!std::isfinite(L)) return L;
            rg.set(detail::ArrMap<A>(gr, V));
            return L;
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("uskd_loss", pass.metric, pass.count);
    res.metrics.add("uskd_target_loss", pass.aux, pass.count);
    res.metrics.add("uskd_target_sq", sq_sum, pass.count);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

/// USKD's student term without a weak head (the ranking by the student's log-probabilities).
template <class DS, class DM>
Result<::rlpo::detail::scalar_t<DS>> uskd(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DM>& mask,
    const std::vector<Index>& targets, const USKDOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    const Mat<S> none(0, 0);
    return uskd(student_logits, none, mask, targets, opts, norm, out);
}

/// USKD's weak-head term: μ · label-smoothed cross-entropy of the weak logits `[N, V]` against
/// the targets; gradient w.r.t. `weak_logits`.
template <class DW, class DM>
Result<::rlpo::detail::scalar_t<DW>> uskd_weak(
    const Eigen::MatrixBase<DW>& weak_logits, const Eigen::MatrixBase<DM>& mask,
    const std::vector<Index>& targets, const USKDOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DW>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DW>;
    using A = detail::acc_t<S>;
    static_assert(detail::is_logit_scalar_v<S>,
                  "rlpo::distill: logits must be float, double or Eigen::bfloat16");
    constexpr const char* fn = "distill::uskd_weak";
    const ConstMatRef<S> u(weak_logits.derived());
    const Index N = u.rows(), V = u.cols();
    detail::validate_uskd(fn, opts);
    RLPO_CHECK(V >= 2, fn, "weak_logits: need at least 2 vocabulary entries, given ", V);
    const detail::RowPlan plan = detail::plan_rows(fn, N, mask, norm);
    detail::check_targets(fn, targets, plan, N, V);
    const double ls = opts.weak_smoothing;
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    const auto pass = detail::drive_rows<S, A>(
        fn, plan, N, V, g, 1.0,
        [&](Index n, detail::Scratch<A>& ws, const detail::GradRow<S>& rg, detail::RowError& err,
            double&) -> double {
            const A* ur = detail::widen<A, S>(u, n, ws.z);
            detail::check_row(ur, V, "weak_logits", err);
            if (err.set()) return 0.0;
            const Index y = targets[static_cast<std::size_t>(n)];
            if (ls > 0) {
                if (const Index c = detail::first_neg_inf(ur, V); c >= 0) {
                    err = {"weak_logits",
                           "-inf logit (the smoothed target gives every entry mass: the loss "
                           "is infinite)",
                           c};
                    return 0.0;
                }
            }
            if (ur[y] == -std::numeric_limits<A>::infinity()) {
                err = {"weak_logits", "-inf logit at the target (the loss is infinite)", y};
                return 0.0;
            }
            const detail::Lse lu = detail::lse_except(ur, V, -1, 1.0);
            const double tu = ls / static_cast<double>(V);
            double ce = 0.0;
            A* gr = ws.a.data();
            for (Index j = 0; j < V; ++j) {
                const double uj = static_cast<double>(ur[j]);
                const double t = tu + (j == y ? 1.0 - ls : 0.0);
                const double w =
                    uj == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(lu.logp(uj));
                if (t > 0) ce -= t * lu.logp(uj);
                gr[j] = static_cast<A>(opts.mu * (w - t));
            }
            const double L = opts.mu * ce;
            if (!std::isfinite(L)) return L;
            rg.set(detail::ArrMap<A>(gr, V));
            return L;
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("uskd_weak_loss", pass.metric, pass.count);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::distill
