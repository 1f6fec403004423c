#pragma once
/// \file
/// TRRD (RLAD): trust-region ratio distillation — PPO clipping with the ratio taken against a
/// mixture of the teacher and the old student policy instead of the old policy alone.
///
/// Per unmasked token, with teacher log-probs `teacher_logp` (of the student's sampled tokens)
/// and mixing weight α ∈ [0, 1]:
///
///     arithmetic (default):  log π_mix = log(α·e^{teacher_logp} + (1 − α)·e^{old_logp})
///     geometric:             log π_mix = α·teacher_logp + (1 − α)·old_logp
///     l = PPO-clip(logp, log π_mix, A)       (policy/ppo_clip.hpp, all its options)
///
/// so a token the teacher likes more than the old student has a smaller ratio r = π_θ/π_mix and
/// room to grow before the clip engages when A > 0 (imitation only where the advantage agrees),
/// while the trust region still bounds the update. α = 0 is PPO/GRPO; α = 1 anchors the ratio to
/// the teacher alone.
///
/// **Gradient** w.r.t. `logp` only (teacher and old log-probs are constants), PPO clip's.
/// **Metrics**: PPO clip's (`pg_clipfrac`, `pg_clipfrac_lower`, `ppo_kl` — here the mean of
/// log π_mix − logp), plus `trrd_anchor_shift` = mean of log π_mix − old_logp.
///
/// **Source and decisions** [verify]: Zhang et al. 2026, "Reinforcement-aware Knowledge
/// Distillation for LLM Reasoning" (RLAD, arXiv 2602.22495): "a PPO/GRPO-style likelihood-ratio
/// objective anchored to a teacher–old-policy mixture". The method section giving the exact
/// mixture and α was not reachable while writing this; rlpo therefore implements the literal
/// reading — a probability mixture (arithmetic, computed stably with log-sum-exp) — as the
/// default, and the log-linear (geometric) mixture as an option, with α = 0.5 as an unverified
/// default: set both explicitly to match a given run.
///
/// **Bad input**: shapes differing from `logp`, α ∉ [0, 1] → rlpo::invalid_argument, plus every
/// PPO-clip error (reported under `policy::ppo_clip`); NaN under a non-zero mask →
/// rlpo::invalid_argument naming the input.

#include <rlpo/policy/detail/common.hpp>
#include <rlpo/policy/ppo_clip.hpp>

#include <algorithm>
#include <cmath>

namespace rlpo::policy {

enum class TRRDMixture { Arithmetic, Geometric };

struct TRRDOptions {
    double alpha = 0.5;  ///< α: teacher weight in the anchor (0 = PPO against π_old)
    TRRDMixture mixture = TRRDMixture::Arithmetic;
    PPOClipOptions ppo{};  ///< clipping of the ratio against the mixture
};

/// log π_mix per token (`[B, T]`, 0 where masked).
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
    RLPO_CHECK(opts.alpha >= 0 && opts.alpha <= 1, fn, "alpha: must be in [0, 1], given ",
               opts.alpha);
    Mat<S> mix = Mat<S>::Zero(olp.rows(), olp.cols());
    const double a = opts.alpha;
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
            if (opts.mixture == TRRDMixture::Geometric) {
                v = (a == 0 ? 0.0 : a * te) + (a == 1 ? 0.0 : (1 - a) * o);
            } else if (a == 0) {
                v = o;
            } else if (a == 1) {
                v = te;
            } else {  // log(α e^te + (1−α) e^o), stable for −inf entries
                const double x = std::log(a) + te, y = std::log1p(-a) + o, hi = std::max(x, y);
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
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape("policy::trrd", "old_logp", olp, "logp", lp);
    const Mat<S> mix = trrd_anchor(olp, teacher_logp, m, opts);
    Result<S> res = ppo_clip(lp, mix, advantages, m, opts.ppo, norm, out);
    double shift = 0, count = 0;
    for (Index i = 0; i < m.rows(); ++i)
        for (Index t = 0; t < m.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            count += mk;
            shift += mk * (static_cast<double>(mix(i, t)) - static_cast<double>(olp(i, t)));
        }
    res.metrics.add("trrd_anchor_shift", shift, count);
    return res;
}

}  // namespace rlpo::policy
