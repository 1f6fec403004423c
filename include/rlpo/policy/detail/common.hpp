#pragma once
/// \file
/// Shared plumbing of the policy surrogates (internal): optional per-token importance weights,
/// forced aggregation modes and the input checks every surrogate repeats.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/token_pass.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <cmath>
#include <optional>

namespace rlpo::policy {

/// Optional per-token weights `[B, T]` that multiply the per-token loss (verl's
/// `rollout_is_weights`: truncated importance weights between the rollout engine and the
/// trainer, see policy/corrections.hpp). They are constants: no gradient flows through them.
/// Entries under a non-zero mask must be finite and >= 0; masked entries are never read.
/// Metrics (clip fractions, ppo_kl) are not weighted, as in verl.
template <class S>
using TokenWeights = std::optional<ConstMatRef<S>>;

namespace detail {

template <class S>
inline void check_weights(const char* fn, const TokenWeights<S>& w, const ConstMatRef<S>& mask) {
    if (!w) return;
    ::rlpo::detail::check_same_shape(fn, "is_weights", *w, "logp", mask);
    for (Index i = 0; i < mask.rows(); ++i)
        for (Index t = 0; t < mask.cols(); ++t) {
            if (mask(i, t) == 0) continue;
            const double v = static_cast<double>((*w)(i, t));
            if (!(std::isfinite(v) && v >= 0))
                ::rlpo::detail::fail(
                    fn, "is_weights: entries under a non-zero mask must be finite and >= 0, given ",
                    v, " at [", i, ", ", t, "]");
        }
}

template <class S>
inline double weight_at(const TokenWeights<S>& w, Index i, Index t) {
    return w ? static_cast<double>((*w)(i, t)) : 1.0;
}

/// The caller's normalizer with its mode replaced by `forced` when set (GSPO, SAPO and GMPO
/// aggregate seq-mean-token-mean in verl whatever the configured mode); the supplied global
/// counts are kept.
inline Normalizer with_mode(const Normalizer& n, const std::optional<Aggregation>& forced) {
    Normalizer out = n;
    if (forced) out.mode = *forced;
    return out;
}

inline void check_clamp(const char* fn, const char* name, double v) {
    RLPO_CHECK(v > 0 && !std::isnan(v), fn, name, ": must be > 0, given ", v);
}

/// torch.maximum / torch.minimum of two branches with their gradients: ties split the gradient
/// in half, as autograd does (so results match the PyTorch references everywhere).
inline ::rlpo::detail::LossGrad tie_max(double a, double ga, double b, double gb) {
    if (a > b) return {a, ga};
    if (b > a) return {b, gb};
    return {a, 0.5 * (ga + gb)};
}
inline ::rlpo::detail::LossGrad tie_min(double a, double ga, double b, double gb) {
    if (a < b) return {a, ga};
    if (b < a) return {b, gb};
    return {a, 0.5 * (ga + gb)};
}

/// Report the first NaN among `inputs` at an unmasked position of row i (rows walked by hand).
template <class S>
inline void check_row_nan(const char* fn, const ConstMatRef<S>& mask, Index i,
                          std::initializer_list<::rlpo::detail::NamedInput<S>> inputs) {
    for (Index t = 0; t < mask.cols(); ++t) {
        if (mask(i, t) == 0) continue;
        for (const auto& in : inputs)
            if (std::isnan(static_cast<double>((*in.x)(i, t))))
                ::rlpo::detail::fail(fn, in.name, ": NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
    }
}

}  // namespace detail
}  // namespace rlpo::policy
