#pragma once
/// \file
/// Off-policy corrections and token masks: truncated / masked importance sampling between the
/// rollout engine and the trainer, DeepSeek-V3.2's off-policy sequence mask, and the
/// top-entropy token mask. They produce constants (weights, masks) that the surrogates consume:
/// pass `weights` as `is_weights` and the returned mask as `mask` (policy/policy_loss.hpp).
///
/// **Rollout correction** (`rollout_correction`). The rollout engine (vLLM, SGLang) samples with
/// log-probs `rollout_logp` that differ from the trainer's `old_logp` for the same policy. With
/// lr_t = old_logp_t − rollout_logp_t (clamped to ±L, L = 20 as verl's safety bound):
///
/// | level           | log-weight                         | verl `rollout_is`            |
/// |-----------------|------------------------------------|------------------------------|
/// | `Token`         | lr_t                               | `token`                      |
/// | `Sequence`      | clamp(Σ_t m_t·lr_t, ±L) per row     | `sequence`                   |
/// | `GeometricMean` | Σ_t m_t·lr_t / |y_i| per row        | (geometric sequence ratio)   |
///
/// w = exp(log-weight). `Truncate` (TIS): weights = min(w, C_max) (and max(·, C_min) when
/// `lower` is set; verl truncates only above). `Mask` (masked IS / rejection): tokens (Token) or
/// whole rows (Sequence, GeometricMean) with w outside [C_min, C_max] are removed from the mask;
/// the kept ones keep their weight w. C_min defaults to 1/C_max in Mask mode.
/// Metrics (means over unmasked tokens, before truncation, as verl computes them):
/// `rollout_is_mean`, `rollout_is_ratio_fraction_high` (w > C_max),
/// `rollout_is_ratio_fraction_low` (w < C_min, or < 1/C_max when unset), and in Mask mode
/// `rollout_rs_masked_fraction`. Defaults: Token, Truncate, C_max = 2 (verl's
/// `rollout_is_threshold`); Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
/// Off-Policy RL Training" (TIS) and Liu et al. 2025 ("When speed kills stability", MIS).
///
/// **Off-policy sequence mask** (`off_policy_sequence_mask`, DeepSeek-AI 2025, DeepSeek-V3.2):
/// a token is kept when A_t ≥ 0 or when its row's mean of (rollout_logp − logp) over unmasked
/// tokens is ≤ δ — negative-advantage sequences that the current policy has drifted far from are
/// dropped. With advantages constant over each row (GRPO) this drops whole sequences, as TRL's
/// `off_policy_mask_threshold` does (TRL passes the rollout log-probs when it has them, else
/// old_logp). Metric `off_policy_masked_fraction` (tokens dropped / unmasked tokens).
///
/// **Top-entropy mask** (`top_entropy_mask`, Wang et al. 2025, "Beyond the 80/20 Rule"): keeps
/// the unmasked tokens whose entropy is ≥ the (1 − ρ) quantile of the unmasked entropies
/// (linear interpolation between order statistics, `torch.quantile`'s default), ρ = 0.2. TRL's
/// `top_entropy_quantile` q corresponds to ρ = 1 − q. Ties at the threshold are all kept.
/// Metric `entropy_mask_kept_fraction`.
///
/// **Bad input**: shape mismatches, C_max ≤ 0, C_min < 0 or C_min > C_max, L ≤ 0, δ NaN,
/// ρ ∉ (0, 1] → rlpo::invalid_argument; NaN under a non-zero mask → rlpo::invalid_argument
/// naming the input; both log-probs −inf at one token (log-ratio undefined) is reported.
/// Masked entries are never read; their weights are 0 and their mask stays 0.

#include <rlpo/policy/detail/common.hpp>

#include <algorithm>
#include <vector>

namespace rlpo::policy {

enum class ISLevel { Token, Sequence, GeometricMean };
enum class ISMode { Truncate, Mask };

struct RolloutCorrectionOptions {
    ISLevel level = ISLevel::Token;
    ISMode mode = ISMode::Truncate;
    double upper = 2.0;             ///< C_max
    std::optional<double> lower{};  ///< C_min (Truncate: none; Mask: 1/C_max when unset)
    double log_ratio_clamp = 20.0;  ///< L
};

/// Weights and mask to hand to a surrogate, and the metrics of the correction.
template <class S>
struct RolloutCorrection {
    Mat<S> weights;  ///< `[B, T]`, 0 where masked
    Mat<S> mask;     ///< `[B, T]`, the input mask with rejected tokens set to 0
    Metrics metrics;
};

/// Importance weights (and optionally rejection) between `old_logp` (trainer) and
/// `rollout_logp` (rollout engine). All inputs `[B, T]`.
template <class DO, class DR, class DM>
RolloutCorrection<::rlpo::detail::scalar_t<DO>> rollout_correction(
    const Eigen::MatrixBase<DO>& old_logp, const Eigen::MatrixBase<DR>& rollout_logp,
    const Eigen::MatrixBase<DM>& mask, const RolloutCorrectionOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DO>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::rollout_correction";
    const ConstMatRef<S> olp(old_logp.derived()), rlp(rollout_logp.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "rollout_logp", rlp, "old_logp", olp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "old_logp", olp);
    ::rlpo::detail::check_positive(fn, "upper", opts.upper);
    if (opts.lower)
        RLPO_CHECK(std::isfinite(*opts.lower) && *opts.lower >= 0 && *opts.lower <= opts.upper, fn,
                   "lower: must be in [0, upper], given ", *opts.lower);
    detail::check_clamp(fn, "log_ratio_clamp", opts.log_ratio_clamp);
    ::rlpo::detail::check_mask(fn, m);
    const double L = opts.log_ratio_clamp, hi = opts.upper;
    const bool mask_mode = opts.mode == ISMode::Mask;
    const double lo_metric = opts.lower.value_or(1.0 / hi);
    const double lo = opts.lower.value_or(mask_mode ? 1.0 / hi : 0.0);
    const Index B = olp.rows(), T = olp.cols();
    RolloutCorrection<S> out;
    out.weights = Mat<S>::Zero(B, T);
    out.mask = Mat<S>::Zero(B, T);
    double count = 0, wsum = 0, n_hi = 0, n_lo = 0, n_rej = 0;
    for (Index i = 0; i < B; ++i) {
        double len = 0, sum = 0;
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double a = static_cast<double>(olp(i, t)), b = static_cast<double>(rlp(i, t));
            if (std::isnan(a))
                ::rlpo::detail::fail(fn, "old_logp: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
            if (std::isnan(b))
                ::rlpo::detail::fail(fn, "rollout_logp: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
            const double lr = a - b;
            if (std::isnan(lr))
                ::rlpo::detail::fail(fn, "inputs at [", i, ", ", t,
                                     "] give an undefined log-ratio: old_logp=", a,
                                     " rollout_logp=", b);
            len += mk;
            sum += mk * lr;
        }
        if (len == 0) continue;
        if (std::isnan(sum))
            ::rlpo::detail::fail(fn, "inputs of row ", i,
                                 " give an undefined (NaN) sequence log-ratio");
        double row_logw = 0;
        if (opts.level == ISLevel::Sequence) row_logw = std::clamp(sum, -L, L);
        if (opts.level == ISLevel::GeometricMean) row_logw = std::clamp(sum / len, -L, L);
        bool row_keep = true;
        if (opts.level != ISLevel::Token) {
            const double w = std::exp(row_logw);
            row_keep = !mask_mode || (w >= lo && w <= hi);
        }
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double lr = static_cast<double>(olp(i, t)) - static_cast<double>(rlp(i, t));
            const double w =
                opts.level == ISLevel::Token ? std::exp(std::clamp(lr, -L, L)) : std::exp(row_logw);
            count += mk;
            wsum += mk * w;
            n_hi += w > hi ? mk : 0.0;
            n_lo += w < lo_metric ? mk : 0.0;
            bool keep = row_keep;
            if (opts.level == ISLevel::Token && mask_mode) keep = w >= lo && w <= hi;
            if (!keep) {
                n_rej += mk;
                continue;
            }
            out.mask(i, t) = static_cast<S>(mk);
            out.weights(i, t) = static_cast<S>(mask_mode ? w : std::clamp(w, lo, hi));
        }
    }
    out.metrics.add("rollout_is_mean", wsum, count);
    out.metrics.add("rollout_is_ratio_fraction_high", n_hi, count);
    out.metrics.add("rollout_is_ratio_fraction_low", n_lo, count);
    if (mask_mode) out.metrics.add("rollout_rs_masked_fraction", n_rej, count);
    return out;
}

/// A mask with its metrics.
template <class S>
struct TokenMask {
    Mat<S> mask;
    Metrics metrics;
};

/// DeepSeek-V3.2 off-policy sequence mask: keep a token if A ≥ 0 or its row's mean of
/// (rollout_logp − logp) is ≤ δ. Returns the input mask with dropped tokens set to 0.
template <class DL, class DR, class DA, class DM>
TokenMask<::rlpo::detail::scalar_t<DL>> off_policy_sequence_mask(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DR>& rollout_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask, double delta) {
    using S = ::rlpo::detail::scalar_t<DL>;
    constexpr const char* fn = "policy::off_policy_sequence_mask";
    const ConstMatRef<S> lp(logp.derived()), rlp(rollout_logp.derived()), A(advantages.derived()),
        m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "rollout_logp", rlp, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "advantages", A, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
    RLPO_CHECK(!std::isnan(delta), fn, "delta: must not be NaN");
    ::rlpo::detail::check_mask(fn, m);
    TokenMask<S> out;
    out.mask = Mat<S>::Zero(lp.rows(), lp.cols());
    double count = 0, dropped = 0;
    for (Index i = 0; i < lp.rows(); ++i) {
        detail::check_row_nan<S>(fn, m, i,
                                 {{"logp", &lp}, {"rollout_logp", &rlp}, {"advantages", &A}});
        double len = 0, sum = 0;
        for (Index t = 0; t < lp.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double d = static_cast<double>(rlp(i, t)) - static_cast<double>(lp(i, t));
            if (std::isnan(d))
                ::rlpo::detail::fail(fn, "inputs at [", i, ", ", t,
                                     "] give an undefined log-ratio");
            len += mk;
            sum += mk * d;
        }
        if (len == 0) continue;
        if (std::isnan(sum))
            ::rlpo::detail::fail(fn, "inputs of row ", i,
                                 " give an undefined (NaN) mean log-ratio");
        const bool low_kl = sum / len <= delta;
        for (Index t = 0; t < lp.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            count += mk;
            if (static_cast<double>(A(i, t)) >= 0 || low_kl)
                out.mask(i, t) = static_cast<S>(mk);
            else
                dropped += mk;
        }
    }
    out.metrics.add("off_policy_masked_fraction", dropped, count);
    return out;
}

/// Top-entropy token mask: keep the unmasked tokens with entropy ≥ the (1 − ρ) quantile.
/// `entropy` is `[B, T]` (per-token entropies, e.g. from `entropy_bonus` or `entropy_rows`).
template <class DE, class DM>
TokenMask<::rlpo::detail::scalar_t<DE>> top_entropy_mask(const Eigen::MatrixBase<DE>& entropy,
                                                         const Eigen::MatrixBase<DM>& mask,
                                                         double keep_fraction = 0.2) {
    using S = ::rlpo::detail::scalar_t<DE>;
    constexpr const char* fn = "policy::top_entropy_mask";
    const ConstMatRef<S> H(entropy.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "mask", m, "entropy", H);
    RLPO_CHECK(keep_fraction > 0 && keep_fraction <= 1, fn,
               "keep_fraction: must be in (0, 1], given ", keep_fraction);
    ::rlpo::detail::check_mask(fn, m);
    std::vector<double> vals;
    for (Index i = 0; i < H.rows(); ++i)
        for (Index t = 0; t < H.cols(); ++t) {
            if (m(i, t) == 0) continue;
            const double h = static_cast<double>(H(i, t));
            if (std::isnan(h))
                ::rlpo::detail::fail(fn, "entropy: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
            vals.push_back(h);
        }
    TokenMask<S> out;
    out.mask = Mat<S>::Zero(H.rows(), H.cols());
    if (vals.empty()) {
        out.metrics.add("entropy_mask_kept_fraction", 0.0, 0.0);
        return out;
    }
    std::sort(vals.begin(), vals.end());
    const double pos = (1.0 - keep_fraction) * static_cast<double>(vals.size() - 1);
    const auto k = static_cast<std::size_t>(std::floor(pos));
    const double frac = pos - static_cast<double>(k);
    const double thr = k + 1 < vals.size() ? vals[k] + frac * (vals[k + 1] - vals[k]) : vals[k];
    double kept = 0, count = 0;
    for (Index i = 0; i < H.rows(); ++i)
        for (Index t = 0; t < H.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            count += mk;
            if (static_cast<double>(H(i, t)) >= thr) {
                out.mask(i, t) = static_cast<S>(mk);
                kept += mk;
            }
        }
    out.metrics.add("entropy_mask_kept_fraction", kept, count);
    return out;
}

}  // namespace rlpo::policy
