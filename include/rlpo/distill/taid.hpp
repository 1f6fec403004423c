#pragma once
/// \file
/// TAID — Temporally Adaptive Interpolated Distillation (Shing et al., ICLR 2025,
/// arXiv:2501.16937): the student is distilled towards an intermediate target that moves
/// from the student to the teacher, and the interpolation time t adapts to the loss.
///
/// Per token row: target r_t = softmax(((1 − t)·sg(z) + t·y)/τ), a logit-space interpolation
/// with the student's logits z detached (sg = stop-gradient), student q = softmax(z/τ), and
///
///     L = −Σ_j r_t,j log q_j,          ∂L/∂z_j = (q_j − r_t,j)/τ   (r_t is a constant).
///
/// As in the paper's code (which calls a DistiLLM-style forward KL = cross-entropy), the value
/// is the cross-entropy; it differs from KL(r_t‖q) by the entropy of r_t, constant for the
/// gradient. t = 1 is forward-KL distillation (cross-entropy form); t = 0 has zero gradient.
///
/// `TAIDSchedule` is the adaptive update of t (paper Algorithm 1 as we read it): after each
/// step with loss J_n, the relative improvement δ_n = (J_{n−1} − J_n)/(J_{n−1} + ε) feeds a
/// momentum m_n = β m_{n−1} + (1 − β) δ_n, and
///     t_n = min(t_end, max(t_linear(n), t_{n−1} + α·σ(m_n)·(1 − t_{n−1}))),
/// with the linear floor t_linear(n) = t_start + (t_end − t_start)·n / total_steps. Defaults
/// t_start 0.4, t_end 1.0, α 5e−4, β 0.99 (the paper's). The first update only records J.
///
/// Rows, mask, aggregation, τ² option, GradientOut, OpenMP and bfloat16 as in
/// divergences.hpp. Metric: `taid_loss` (mean L over unmasked rows), `taid_t`.
///
/// **Bad input**: t outside [0, 1], τ < 1e−4 or not finite (`kMinTemperature`), V = 0 with
/// rows ("logits: V = 0"; `[0, V]` is an empty batch), shapes, mask, and the per-row logit errors of
/// divergences.hpp; schedule options outside their domain (t_start ∉ [0, 1), t_end ∉ (0, 1],
/// α ∉ [0, 1], β ∉ [0, 1), total_steps ≤ 0). The value and metrics are checked finite at the
/// end (rlpo::numerical_error otherwise).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <cmath>
#include <utility>

namespace rlpo::distill {

struct TAIDOptions {
    double t = 0.4;                    ///< interpolation time in [0, 1] (from TAIDSchedule)
    double temperature = 1.0;          ///< τ > 0
    bool temperature_squared = false;  ///< multiply value and gradient by τ²
};

namespace detail {

template <class S, class A>
inline double taid_row(double t, double invT, const A* z, const A* y, Index V, Scratch<A>& ws,
                       const GradRow<S>& rg, RowError& err) {
    check_row(z, V, "student_logits", err);
    if (err.set()) return 0.0;
    check_row(y, V, "teacher_logits", err);
    if (err.set()) return 0.0;
    const A ai = static_cast<A>(invT);
    const CArrMap<A> za(z, V), ya(y, V);
    ArrMap<A> q(ws.a.data(), V), r(ws.b.data(), V);
    const bool safe = has_neg_inf(z, V) || has_neg_inf(y, V);
    // interpolated logits u = (1 − t) z + t y  (−inf where either is −inf and its weight > 0)
    // the logits enter shifted by their row maxima (the softmax of r is invariant to the
    // constant (1−t)·mz + t·my): no rounding relative to large offsets, and no inf − inf
    const A mz = za.maxCoeff(), my = ya.maxCoeff();
    if (safe) {
        const A inf = std::numeric_limits<A>::infinity();
        r = (za == -inf || ya == -inf)
                .select(-inf, static_cast<A>(1.0 - t) * (za - mz) + static_cast<A>(t) * (ya - my));
        if (t == 0.0) r = za - mz;
        if (t == 1.0) r = ya - my;
    } else {
        r = static_cast<A>(1.0 - t) * (za - mz) + static_cast<A>(t) * (ya - my);
    }
    const A mu = r.maxCoeff();
    if (!(mu > -std::numeric_limits<A>::infinity())) {
        err = {"inputs", "the interpolated target has no finite logit", -1};
        return 0.0;
    }
    const double su = safe ? exp_row<true>(r.data(), V, mu, ai, r.data())
                           : exp_row<false>(r.data(), V, mu, ai, r.data());
    r *= static_cast<A>(1.0 / su);
    const double sq =
        safe ? exp_row<true>(z, V, mz, ai, q.data()) : exp_row<false>(z, V, mz, ai, q.data());
    q *= static_cast<A>(1.0 / sq);
    // L = −Σ r log q = log sq − Σ r (z − mz)/τ: each term of the sum ≤ 0, no cancellation of
    // lse against Σ r z at large logits (0·(−inf) terms skipped)
    const double rz =
        safe ? sum_chunks((r > A(0)).select(r * (za - mz), A(0))) : sum_chunks(r * (za - mz));
    const double L = std::log(sq) - rz * invT;
    if (!std::isfinite(L)) return L;
    rg.set((q - r) * ai);
    return L;
}

}  // namespace detail

/// TAID loss at interpolation time `opts.t`; gradient w.r.t. `student_logits`.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> taid(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const TAIDOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    using A = detail::acc_t<S>;
    constexpr const char* fn = "distill::taid";
    const detail::LogitPair<DS, DT> in(fn, student_logits, teacher_logits);
    const ConstMatRef<S>&z = in.z, &y = in.y;
    RLPO_CHECK(opts.t >= 0 && opts.t <= 1, fn, "t: must be in [0, 1], given ", opts.t);
    detail::check_temperature(fn, opts.temperature);
    const double t2 = detail::temperature_scale(fn, opts.temperature, opts.temperature_squared);
    const Index N = z.rows(), V = z.cols();
    detail::RowCall<S> c(fn, N, V, mask, norm, out);
    const auto pass = detail::drive_rows<S, A>(
        fn, c.plan, N, V, c.g, t2,
        [&](Index n, detail::Scratch<A>& ws, const detail::GradRow<S>& rg, detail::RowError& err,
            double&) -> double {
            const A* zr = detail::widen<A, S>(z, n, ws.z);
            const A* yr = detail::widen<A, S>(y, n, ws.y);
            return detail::taid_row<S, A>(opts.t, 1.0 / opts.temperature, zr, yr, V, ws, rg, err);
        });
    c.res.value = c.g.coef() * pass.value;
    c.res.metrics.add("taid_loss", pass.metric, pass.count);
    c.res.metrics.set("taid_t", opts.t);
    ::rlpo::detail::check_finite_result(fn, c.res.value, c.res.metrics);
    return std::move(c.res);
}

/// The adaptive interpolation time of TAID (a small stateful helper; see the file comment).
class TAIDSchedule {
public:
    struct Options {
        double t_start = 0.4;
        double t_end = 1.0;
        double alpha = 5e-4;  ///< step size of the adaptive increment
        double beta = 0.99;   ///< momentum of the relative loss change
        double eps = 1e-8;    ///< ε of the relative change
        long long total_steps = 1;
    };

    explicit TAIDSchedule(const Options& o) : o_(o), t_(o.t_start) {
        constexpr const char* fn = "distill::TAIDSchedule";
        RLPO_CHECK(o.t_start >= 0 && o.t_start < 1, fn, "t_start: must be in [0, 1), given ",
                   o.t_start);
        RLPO_CHECK(o.t_end > 0 && o.t_end <= 1, fn, "t_end: must be in (0, 1], given ", o.t_end);
        RLPO_CHECK(o.t_start <= o.t_end, fn, "t_start: must be <= t_end, given ", o.t_start, " > ",
                   o.t_end);
        RLPO_CHECK(o.alpha >= 0 && o.alpha <= 1, fn, "alpha: must be in [0, 1], given ", o.alpha);
        RLPO_CHECK(o.beta >= 0 && o.beta < 1, fn, "beta: must be in [0, 1), given ", o.beta);
        RLPO_CHECK(o.total_steps > 0, fn, "total_steps: must be > 0, given ", o.total_steps);
        ::rlpo::detail::check_positive(fn, "eps", o.eps);
    }

    /// Current t (pass to TAIDOptions::t).
    double t() const { return t_; }
    double momentum() const { return m_; }
    long long step() const { return step_; }

    /// Record the loss of the step just taken and advance t. Returns the new t.
    double update(double loss) {
        RLPO_CHECK(std::isfinite(loss), "distill::TAIDSchedule::update",
                   "loss: must be finite, given ", loss);
        ++step_;
        const double lin =
            std::min(o_.t_end, o_.t_start + (o_.t_end - o_.t_start) * static_cast<double>(step_) /
                                                static_cast<double>(o_.total_steps));
        if (has_prev_) {
            const double delta = (prev_ - loss) / (prev_ + o_.eps);
            m_ = o_.beta * m_ + (1 - o_.beta) * delta;
            const double inc = o_.alpha * (1.0 / (1.0 + std::exp(-m_))) * (1.0 - t_);
            t_ = std::min(o_.t_end, std::max(lin, t_ + inc));
        } else {
            t_ = std::min(o_.t_end, std::max(lin, t_));
        }
        prev_ = loss;
        has_prev_ = true;
        return t_;
    }

private:
    Options o_;
    double t_;
    double m_ = 0.0;
    double prev_ = 0.0;
    bool has_prev_ = false;
    long long step_ = 0;
};

}  // namespace rlpo::distill
