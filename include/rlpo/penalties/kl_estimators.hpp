#pragma once
/// \file
/// Token-level estimators of KL(π‖π_ref) from samples of π (Schulman, "Approximating KL
/// divergence", 2020), used as a penalty in the loss or in the reward.
///
/// With d = logp − ref_logp (so the sampled log-ratio log π/π_ref) and δ = −d:
///
/// | estimator     | verl / TRL name   | value                        | ∂/∂logp                        |
/// |---------------|-------------------|------------------------------|--------------------------------|
/// | `K1`          | `kl`, `k1`        | d                            | 1                              |
/// | `Abs`         | `abs`             | abs(d)                       | sign(d) (0 at d = 0)           |
/// | `K2`          | `mse`, `k2`       | ½ d²                         | d                              |
/// | `K3`          | `low_var_kl`, `k3`| e^δc − δc − 1, clamped to ≤ v_max | −(e^δc − 1) where unclamped, else 0 |
///
/// where δc = clamp(δ, −L, L). verl clamps k3 (L = 20, v_max = 10; the clamps stop the gradient,
/// as `torch.clamp` does, inclusive at the bounds); TRL's k3 is unclamped (`KLOptions::trl()`).
/// What each estimator's gradient *follows* when used as a loss on-policy is proven by exact
/// enumeration in tests/penalties (k1 → 0, k2 → ∇KL(π‖π_ref), k3 → ∇KL(π_ref‖π)).
///
/// The loss is the aggregation (core/aggregation.hpp) of the per-token value; the gradient is
/// w.r.t. `logp`. Metric: `kl` = mean per-token estimate over unmasked tokens.
///
/// **Bad input**: shape mismatch, L ≤ 0, v_max ≤ 0 → rlpo::invalid_argument; NaN under a non-zero
/// mask → rlpo::invalid_argument naming the input; −inf log-probs: k3 is clamped and finite, the
/// others give ±inf values (never NaN), except both −inf at one token (d undefined), reported.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/token_pass.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace rlpo::penalties {

enum class KLEstimator { K1, Abs, K2, K3 };

struct KLOptions {
    KLEstimator estimator = KLEstimator::K3;
    /// L: clamp of δ before exp (k3 only); +inf disables.
    double log_ratio_clamp = 20.0;
    /// v_max: clamp of the k3 value (k3 only); +inf disables.
    double value_clamp = 10.0;

    /// verl `kl_penalty`: k3 clamped (±20, ≤10).
    static KLOptions verl(KLEstimator e = KLEstimator::K3) {
        KLOptions o;
        o.estimator = e;
        return o;
    }
    /// TRL GRPOTrainer: k3 unclamped.
    static KLOptions trl(KLEstimator e = KLEstimator::K3) {
        KLOptions o;
        o.estimator = e;
        o.log_ratio_clamp = std::numeric_limits<double>::infinity();
        o.value_clamp = std::numeric_limits<double>::infinity();
        return o;
    }
};

/// Estimator value and ∂/∂logp for one token, d = logp − ref_logp.
inline ::rlpo::detail::LossGrad kl_estimate(double d, const KLOptions& o) {
    switch (o.estimator) {
        case KLEstimator::K1: return {d, 1.0};
        case KLEstimator::Abs: return {std::abs(d), d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0)};
        case KLEstimator::K2: return {0.5 * d * d, d};
        case KLEstimator::K3: {
            const double L = o.log_ratio_clamp;
            const double delta = -d;
            const double dc = std::clamp(delta, -L, L);
            const double e = std::exp(dc);
            const double v = e - dc - 1.0;
            const bool in_delta = delta >= -L && delta <= L;
            const bool in_value = v <= o.value_clamp;  // v ≥ 0 > −v_max always
            const double value = std::min(v, o.value_clamp);
            const double grad = (in_delta && in_value) ? -(e - 1.0) : 0.0;  // ∂v/∂δ · ∂δ/∂logp
            return {value, grad};
        }
    }
    return {0.0, 0.0};
}

namespace detail {
inline void validate(const char* fn, const KLOptions& o) {
    RLPO_CHECK(o.log_ratio_clamp > 0 && !std::isnan(o.log_ratio_clamp), fn,
               "log_ratio_clamp: must be > 0, given ", o.log_ratio_clamp);
    RLPO_CHECK(o.value_clamp > 0 && !std::isnan(o.value_clamp), fn,
               "value_clamp: must be > 0, given ", o.value_clamp);
}
}  // namespace detail

/// Name of an estimator as verl spells it (k1 → "kl", k2 → "mse", k3 → "low_var_kl").
inline const char* to_string(KLEstimator e) {
    switch (e) {
        case KLEstimator::K1: return "k1";
        case KLEstimator::Abs: return "abs";
        case KLEstimator::K2: return "k2";
        case KLEstimator::K3: return "k3";
    }
    return "?";
}

/// Parse verl/TRL spellings: `kl`, `k1`, `abs`, `mse`, `k2`, `low_var_kl`, `k3`. Unknown names
/// throw with the list of valid names.
inline KLEstimator parse_kl_estimator(const std::string& name) {
    struct Entry {
        const char* name;
        KLEstimator e;
    };
    static const Entry table[] = {{"kl", KLEstimator::K1},  {"k1", KLEstimator::K1},
                                  {"abs", KLEstimator::Abs}, {"mse", KLEstimator::K2},
                                  {"k2", KLEstimator::K2},  {"low_var_kl", KLEstimator::K3},
                                  {"k3", KLEstimator::K3}};
    std::string valid;
    for (const auto& e : table) {
        if (name == e.name) return e.e;
        valid += valid.empty() ? "" : ", ";
        valid += e.name;
    }
    ::rlpo::detail::fail("penalties::parse_kl_estimator", "name: unknown KL estimator '", name,
                         "'; valid names: ", valid);
}

/// Token-level KL penalty (KL in the loss): aggregation of the estimator over the mask, with its
/// gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DR, class DM>
Result<::rlpo::detail::scalar_t<DL>> kl_penalty(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DR>& ref_logp,
    const Eigen::MatrixBase<DM>& mask, const KLOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "penalties::kl_penalty";
    const ConstMatRef<S> lp(logp.derived()), rlp(ref_logp.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "ref_logp", rlp, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
    detail::validate(fn, opts);

    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, lp.rows(), lp.cols());
    const auto pass = ::rlpo::detail::token_pass<1, S>(
        fn, m, w, g, {{"logp", &lp}, {"ref_logp", &rlp}},
        [&](Index i, Index t, std::array<double, 1>& st) -> ::rlpo::detail::LossGrad {
            const double d = static_cast<double>(lp(i, t)) - static_cast<double>(rlp(i, t));
            if (std::isnan(d)) return {d, d};
            const ::rlpo::detail::LossGrad lg = kl_estimate(d, opts);
            st[0] = lg.loss;
            return lg;
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("kl", pass.stats[0], pass.count);
    return res;
}

}  // namespace rlpo::penalties
