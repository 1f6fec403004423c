#pragma once
/// \file
/// Reward shaping: rules that turn raw per-response rewards (and lengths, groups, reference
/// log-probs) into the scores the advantage estimators take.
///
/// Every function returns a new vector (or `[B, T]` array); none is differentiated (rewards are
/// constants of the loss). Lengths are per-response token counts (`lengths_from_mask(mask)`).
///
/// **Bad input** (rlpo::invalid_argument): size mismatches, NaN / ±inf rewards, negative
/// lengths, hyperparameters outside their domain (each function's comment lists its own).

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace rlpo::rollout {

// ---------------------------------------------------------------------------------------------
// DAPO overlong soft penalty
// ---------------------------------------------------------------------------------------------

/// Options of `overlong_penalty`: L_max (the generation cap), L_cache (the soft zone before it)
/// and the penalty factor. DAPO's paper uses L_max = 20480, L_cache = 4096; these must be set
/// by the caller (no default fits every cap).
struct OverlongOptions {
    double max_length = 0.0;     ///< L_max > 0
    double cache_length = 0.0;   ///< L_cache in (0, L_max]
    double penalty_factor = 1.0; ///< verl `overlong_buffer.penalty_factor` (≥ 0)
    /// Beyond L_max: −factor (paper, TRL) or the linear ramp continued (verl, whose lengths
    /// never exceed L_max, so it never clips).
    bool clip_beyond_max = true;

    /// DAPO paper / TRL `get_soft_overlong_punishment(max_completion_len, soft_punish_cache)`.
    static OverlongOptions dapo(double max_length, double cache_length) {
        OverlongOptions o;
        o.max_length = max_length;
        o.cache_length = cache_length;
        return o;
    }
    /// verl DAPO reward manager: `max_resp_len`, `overlong_buffer.len`, `penalty_factor`.
    static OverlongOptions verl(double max_resp_len, double buffer_len, double penalty_factor = 1.0) {
        OverlongOptions o = dapo(max_resp_len, buffer_len);
        o.penalty_factor = penalty_factor;
        o.clip_beyond_max = false;
        return o;
    }
};

/// DAPO overlong soft penalty (Yu et al. 2025, arXiv:2503.14476, eq. 13), to be *added* to the
/// task reward:
///
///   R_len(L) = 0                                   if L ≤ L_max − L_cache
///            = −f·(L − (L_max − L_cache)) / L_cache if L_max − L_cache < L ≤ L_max
///            = −f                                  if L > L_max (clip_beyond_max)
///
/// f = penalty_factor (1 in the paper). Bad input: L_max ≤ 0, L_cache ∉ (0, L_max], f < 0,
/// lengths negative or non-finite.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> overlong_penalty(const Eigen::MatrixBase<D>& lengths,
                                                   const OverlongOptions& opts) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::overlong_penalty";
    ::rlpo::detail::check_positive(fn, "max_length", opts.max_length);
    RLPO_CHECK(opts.cache_length > 0 && opts.cache_length <= opts.max_length, fn,
               "cache_length: must be in (0, max_length = ", opts.max_length, "], given ",
               opts.cache_length);
    ::rlpo::detail::check_nonnegative(fn, "penalty_factor", opts.penalty_factor);
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    const double expected = opts.max_length - opts.cache_length;
    std::vector<double> out(L.size(), 0.0);
    for (std::size_t k = 0; k < L.size(); ++k) {
        if (L[k] <= expected) continue;
        if (L[k] > opts.max_length && opts.clip_beyond_max)
            out[k] = -opts.penalty_factor;
        else
            out[k] = -opts.penalty_factor * (L[k] - expected) / opts.cache_length;
    }
    return detail::to_vec<S>(out);
}

}  // namespace rlpo::rollout
