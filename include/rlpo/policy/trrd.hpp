#pragma once
/// \file
/// TRRD (RLAD): trust-region ratio distillation — PPO clipping of a ratio anchored to both the
/// old student policy and the teacher instead of the old policy alone.
///
/// Per unmasked token, with teacher log-probs `teacher_logp` (of the student's sampled tokens),
/// α ∈ [0, 1] the weight of the *old student* (the paper's α) and c the clamp of the
/// student-teacher log-ratio, the log-ratio z = log r that PPO clips is
///
///     geometric (default, the paper's):
///         z = α·(logp − old_logp) + (1 − α)·clamp(logp − teacher_logp, −c, c)
///           = logp − log π_mix  where unclamped, log π_mix = α·old_logp + (1 − α)·teacher_logp
///     arithmetic (option):
///         z = logp − log π_mix,   log π_mix = log(α·e^{old_logp} + (1 − α)·e^{teacher_logp})
///     l = PPO-clip(z, A)       (policy/ppo_clip.hpp, all its options, applied to r = e^z)
///
/// α = 1 is PPO/GRPO against π_old; α = 0 anchors the ratio to the teacher alone. A token the
/// teacher likes more than the old student has a smaller ratio and room to grow before the clip
/// engages when A > 0, while the trust region still bounds the update.
///
/// **Gradient** w.r.t. `logp` only (teacher and old log-probs are constants): PPO clip's
/// ∂l/∂z times ∂z/∂logp = α + (1 − α)·[−c ≤ logp − teacher_logp ≤ c] (geometric; the clamp stops
/// the teacher term's gradient outside the band, inclusive at the bounds, as `torch.clamp`),
/// 1 (arithmetic).
/// **Metrics**: PPO clip's on z (`pg_clipfrac`, `pg_clipfrac_lower`, `ppo_kl` = mean of −z),
/// plus `trrd_anchor_shift` = mean of log π_mix − old_logp (unclamped anchor) and
/// `trrd_teacher_clipfrac` = fraction of tokens whose student-teacher log-ratio is clamped
/// (geometric; 0 for the arithmetic mixture).
///
/// **Source**: Zhang et al. 2026, "Reinforcement-aware Knowledge Distillation for LLM Reasoning"
/// (RLAD, arXiv 2602.22495 v2), Eq. 3–5: r^TRRD = (π/π_old)^α · (π/π_T)^(1−α), a geometric anchor
/// with α on the old student; α = 0.5 in all experiments after the ablation; Appendix B clamps
/// log(π/π_T) to [−1, 1]; seq-mean-token-mean aggregation (pass it in the Normalizer). The
/// paper's Eq. 3 and Appendix C make α = 1 standard GRPO (its §4.1 prose says the reverse; the
/// equations are followed). rlpo before this version defaulted to the arithmetic mixture with α
/// on the teacher and no clamp; that mixture remains as `TRRDMixture::Arithmetic`, now with α on
/// the old student too (the field is `old_weight`, so code written for the former `alpha` fails
/// to compile instead of silently flipping its meaning).
///
/// **Defaults**: α = 0.5, geometric, c = 1 (+inf disables the clamp), PPO clip's defaults.
///
/// **Bad input**: shapes differing from `logp`, α ∉ [0, 1], c ≤ 0 or NaN →
/// rlpo::invalid_argument, plus every PPO-clip error (reported under `policy::ppo_clip`); NaN
/// under a non-zero mask → rlpo::invalid_argument naming the input. The value and metrics
/// (the anchor shift included) are checked finite (rlpo::numerical_error).
///
/// **Allocates**: the surrogate's inputs z and ∂z/∂logp and a zero old_logp (three `[B, T]`
/// matrices, since the PPO-clip pass runs on z), and the inner PPO gradient when a gradient is
/// asked for.

#include <rlpo/policy/detail/common.hpp>
#include <rlpo/policy/ppo_clip.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace rlpo::policy {

enum class TRRDMixture { Geometric, Arithmetic };

struct TRRDOptions {
    double old_weight = 0.5;  ///< α: weight of the old student in the anchor (1 = PPO vs π_old)
    TRRDMixture mixture = TRRDMixture::Geometric;
    /// c: clamp of logp − teacher_logp in the geometric ratio (the paper's 1; +inf: none).
    double teacher_log_ratio_clamp = 1.0;
    PPOClipOptions ppo{};  ///< clipping of the anchored ratio
};

namespace detail {
inline void validate(const char* fn, const TRRDOptions& o) {
    RLPO_CHECK(o.old_weight >= 0 && o.old_weight <= 1, fn, "old_weight: must be in [0, 1], given ",
               o.old_weight);
    RLPO_CHECK(o.teacher_log_ratio_clamp > 0, fn, "teacher_log_ratio_clamp: must be > 0, given ",
               o.teacher_log_ratio_clamp);
}
}  // namespace detail

/// log π_mix per token (`[B, T]`, 0 where masked): the unclamped anchor of either mixture.
template <class DO, class DT, class DM>
Mat<::rlpo::detail::scalar_t<DO>> trrd_anchor(const Eigen::MatrixBase<DO>& old_logp,
                                              const Eigen::MatrixBase<DT>& teacher_logp,
                                              const Eigen::MatrixBase<DM>& mask,
                                              const TRRDOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DO>;
    constexpr const char* fn = "policy::trrd";
    const ConstMatRef<S> olp(old_logp.derived()), tlp(teacher_logp.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "teacher_logp", tlp, "old_logp", olp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "old_logp", olp);
    detail::validate(fn, opts);
    Mat<S> mix = Mat<S>::Zero(olp.rows(), olp.cols());
    const double a = opts.old_weight;
    for (Index i = 0; i < olp.rows(); ++i)
        for (Index t = 0; t < olp.cols(); ++t) {
            if (m(i, t) == 0) continue;
            const double o = static_cast<double>(olp(i, t)), te = static_cast<double>(tlp(i, t));
            if (std::isnan(o))
                ::rlpo::detail::fail(fn, "old_logp: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
            if (std::isnan(te))
                ::rlpo::detail::fail(fn, "teacher_logp: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
            double v;
            if (a == 1) {
                v = o;
            } else if (a == 0) {
                v = te;
            } else if (opts.mixture == TRRDMixture::Geometric) {
                v = a * o + (1 - a) * te;
            } else {  // log(α e^o + (1−α) e^te), stable for −inf entries
                const double x = std::log(a) + o, y = std::log1p(-a) + te, hi = std::max(x, y);
                v = hi == -std::numeric_limits<double>::infinity()
                        ? hi
                        : hi + std::log1p(std::exp(std::min(x, y) - hi));
            }
            mix(i, t) = static_cast<S>(v);
        }
    return mix;
}

/// TRRD loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DT, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> trrd(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DT>& teacher_logp, const Eigen::MatrixBase<DA>& advantages,
    const Eigen::MatrixBase<DM>& mask, const TRRDOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::trrd";
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), tlp(teacher_logp.derived()),
        m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "old_logp", olp, "logp", lp);
    const Mat<S> mix = trrd_anchor(olp, tlp, m, opts);
    const Index B = lp.rows(), T = lp.cols();
    // z = the anchored log-ratio and f = ∂z/∂logp, per token (0 where masked)
    const bool geo = opts.mixture == TRRDMixture::Geometric;
    const double a = opts.old_weight, c = opts.teacher_log_ratio_clamp;
    Mat<S> z = Mat<S>::Zero(B, T), f = Mat<S>::Zero(B, T);
    double shift = 0, clamped = 0, count = 0;
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double x = static_cast<double>(lp(i, t)), o = static_cast<double>(olp(i, t));
            double zt = x - static_cast<double>(mix(i, t)), ft = 1.0;
            if (geo) {
                const double d = x - static_cast<double>(tlp(i, t));
                const bool in_band = d >= -c && d <= c;
                zt = (a == 0 ? 0.0 : a * (x - o)) + (a == 1 ? 0.0 : (1 - a) * std::clamp(d, -c, c));
                ft = a + (in_band ? 1 - a : 0.0);
                if (!in_band && !std::isnan(d)) clamped += mk;
            }
            z(i, t) = static_cast<S>(zt);
            f(i, t) = static_cast<S>(ft);
            count += mk;
            shift += mk * (static_cast<double>(mix(i, t)) - o);
        }
    const Mat<S> zero = Mat<S>::Zero(B, T);
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, B, T);
    Result<S> inner = g.active() ? ppo_clip(z, zero, advantages, m, opts.ppo, norm)
                                 : ppo_clip(z, zero, advantages, m, opts.ppo, norm, no_grad<S>());
    res.value = g.coef() * inner.value;
    res.metrics = std::move(inner.metrics);
    if (g.active())
        for (Index i = 0; i < B; ++i)
            for (Index t = 0; t < T; ++t) {
                if (m(i, t) == 0)
                    g.zero(i, t);
                else
                    g.put(i, t,
                          static_cast<double>(inner.grad(i, t)) * static_cast<double>(f(i, t)));
            }
    res.metrics.add("trrd_anchor_shift", shift, count);
    res.metrics.add("trrd_teacher_clipfrac", clamped, count);
    res.metrics.with_count_epsilon(norm.count_epsilon);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::policy
