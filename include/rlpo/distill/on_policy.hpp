#pragma once
/// \file
/// Token-level distillation signals for the policy-gradient path.
///
/// **On-policy distillation / G-OPD reward** (`opd_reward`). For sampled tokens of the
/// student with log-probs `logp`, teacher log-probs `teacher_logp` and reference log-probs
/// `ref_logp` (all `[B, T]`), the dense per-token reward
///
///     r_t = λ·(log π_T − log π_ref) − (log π_θ − log π_ref)
///
/// λ = 1 is on-policy distillation (r_t = log π_T − log π_θ: the negative per-token reverse-KL
/// sample, Agarwal et al. / Thinking Machines' on-policy distillation); λ > 1 is ExOPD, which
/// extrapolates beyond the teacher relative to the reference (G-OPD). The reward is a
/// constant for the policy-gradient loss (no gradient is returned): feed it to an advantage
/// estimator. Masked tokens get reward 0 and are never read. Metrics: `opd_reward` (mean r
/// over unmasked tokens) and `opd_reverse_kl` (mean log π_θ − log π_T, the k1 estimate of
/// KL(π_θ‖π_T)). With λ = 1, `ref_logp` is not needed (overload without it).
///
/// **KDRL** (`kdrl`): GRPO's clipped surrogate plus β times a token-level estimator of the
/// reverse KL to the teacher, KL(π_θ‖π_T), on the policy's own samples:
///
///     L = ppo_clip(logp, old_logp, A) + β·agg(k(logp − teacher_logp))
///
/// with the estimator k ∈ {k1, k2, k3} of penalties/kl_estimators.hpp (default k2, whose
/// gradient is the exact reverse-KL gradient on-policy — proven by enumeration in
/// tests/penalties), β = 1e-3 (KDRL, Xu et al. 2025, arXiv:2506.02208), and, optionally, the
/// KD term masked out on responses already rewarded as correct (`correct[b] ≠ 0`: the
/// reward-guided masking of KDRL: distil where the policy still fails). Both terms use the
/// same Normalizer; with global counts supplied, micro-batches sum exactly. Gradient w.r.t.
/// `logp`. Metrics: those of ppo_clip plus `kd_kl` (mean estimator value over the KD tokens)
/// and `kd_coef` (β).
///
/// **Bad input**: shapes, λ not finite, β < 0, `correct` not B entries, and everything
/// ppo_clip and kl_penalty reject (NaN under the mask, …).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>

#include <cmath>
#include <vector>

namespace rlpo::distill {

/// Per-token rewards and their metrics.
template <class S>
struct OPDReward {
    Mat<S> reward;  ///< [B, T]; 0 where the mask is 0
    Metrics metrics;
};

/// G-OPD / ExOPD reward λ·(log π_T − log π_ref) − (log π_θ − log π_ref).
template <class DL, class DT, class DR, class DM>
OPDReward<::rlpo::detail::scalar_t<DL>> opd_reward(const Eigen::MatrixBase<DL>& logp,
                                                   const Eigen::MatrixBase<DT>& teacher_logp,
                                                   const Eigen::MatrixBase<DR>& ref_logp,
                                                   const Eigen::MatrixBase<DM>& mask,
                                                   double lambda = 1.0) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "distill::opd_reward";
    const ConstMatRef<S> lp(logp.derived()), lt(teacher_logp.derived()), lr(ref_logp.derived());
    const auto& m = mask.derived();
    ::rlpo::detail::check_same_shape(fn, "teacher_logp", lt, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "ref_logp", lr, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
    ::rlpo::detail::check_finite_param(fn, "lambda", lambda);
    ::rlpo::detail::check_mask(fn, m);
    OPDReward<S> out;
    out.reward = Mat<S>::Zero(lp.rows(), lp.cols());
    double sr = 0, sk = 0, cnt = 0;
    for (Index i = 0; i < lp.rows(); ++i)
        for (Index t = 0; t < lp.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double a = static_cast<double>(lp(i, t)), b = static_cast<double>(lt(i, t)),
                         c = static_cast<double>(lr(i, t));
            if (std::isnan(a) || std::isnan(b) || std::isnan(c))
                ::rlpo::detail::fail(
                    fn, std::isnan(a) ? "logp" : (std::isnan(b) ? "teacher_logp" : "ref_logp"),
                    ": NaN at [", i, ", ", t, "] under a non-zero mask");
            // λ = 1: the reference cancels exactly (log π_T − log π_θ)
            const double r = lambda == 1.0 ? b - a : lambda * (b - c) - (a - c);
            if (std::isnan(r))
                ::rlpo::detail::fail(fn, "inputs at [", i, ", ", t,
                                     "] give an undefined (NaN) reward: logp=", a,
                                     " teacher_logp=", b, " ref_logp=", c);
            out.reward(i, t) = static_cast<S>(r);
            sr += mk * r;
            sk += mk * (a - b);
            cnt += mk;
        }
    out.metrics.add("opd_reward", sr, cnt);
    out.metrics.add("opd_reverse_kl", sk, cnt);
    return out;
}

/// On-policy distillation reward with λ = 1: log π_T − log π_θ.
template <class DL, class DT, class DM>
OPDReward<::rlpo::detail::scalar_t<DL>> opd_reward(const Eigen::MatrixBase<DL>& logp,
                                                   const Eigen::MatrixBase<DT>& teacher_logp,
                                                   const Eigen::MatrixBase<DM>& mask) {
    return opd_reward(logp, teacher_logp, logp, mask, 1.0);
}

struct KDRLOptions {
    policy::PPOClipOptions clip{};  ///< the GRPO surrogate (ε 0.2)
    double beta = 1e-3;             ///< weight of the KD term, ≥ 0
    penalties::KLEstimator estimator = penalties::KLEstimator::K2;
    /// Drop the KD term on responses marked correct (`correct[b] ≠ 0`).
    bool mask_correct = false;
};

/// KDRL loss: GRPO clipped surrogate + β · reverse-KL-to-teacher estimator. `correct` (B
/// entries) is read only when `opts.mask_correct`. Gradient w.r.t. `logp`.
template <class DL, class DO, class DT, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> kdrl(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DT>& teacher_logp, const Eigen::MatrixBase<DA>& advantages,
    const Eigen::MatrixBase<DM>& mask, const KDRLOptions& opts = {},
    const std::vector<double>& correct = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DL>;
    constexpr const char* fn = "distill::kdrl";
    ::rlpo::detail::check_nonnegative(fn, "beta", opts.beta);
    const Index B = logp.rows();
    ::rlpo::detail::check_same_shape(fn, "teacher_logp", teacher_logp.derived(), "logp",
                                     logp.derived());
    ::rlpo::detail::check_same_shape(fn, "mask", mask.derived(), "logp", logp.derived());
    Mat<S> kd_mask = mask.derived().template cast<S>();
    if (opts.mask_correct) {
        RLPO_CHECK(static_cast<Index>(correct.size()) == B, fn, "correct: expected ", B,
                   " entries (rows of logp), given ", correct.size());
        for (Index i = 0; i < B; ++i)
            if (correct[static_cast<std::size_t>(i)] != 0) kd_mask.row(i).setZero();
    }
    Result<S> res = policy::ppo_clip(logp, old_logp, advantages, mask, opts.clip, norm, out);
    penalties::KLOptions ko = penalties::KLOptions::trl(opts.estimator);
    GradientOut<S> kd_out = no_grad<S>();
    Mat<S>* own = nullptr;
    switch (out.mode) {
        case GradMode::Own:
            own = &res.grad;
            kd_out = add_to<S>(*own, opts.beta * out.coef);
            break;
        case GradMode::Write:
        case GradMode::Add: {
            kd_out = out;
            kd_out.mode = GradMode::Add;
            kd_out.coef = out.coef * opts.beta;
            break;
        }
        case GradMode::None: kd_out.coef = out.coef * opts.beta; break;
    }
    const auto kd = penalties::kl_penalty(logp, teacher_logp, kd_mask, ko, norm, kd_out);
    res.value += kd.value;
    const Metric& k = kd.metrics.at("kl");
    res.metrics.add("kd_kl", k.sum, k.count);
    res.metrics.set("kd_coef", opts.beta);
    return res;
}

}  // namespace rlpo::distill
