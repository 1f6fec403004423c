#pragma once
/// \file
/// The rollout batch: N responses grouped by prompt, their masks, rewards and the per-token
/// quantities the rollout produced, with one `validate()` that names what is wrong.
///
/// | field           | shape     | meaning                                                     |
/// |-----------------|-----------|-------------------------------------------------------------|
/// | `groups`        | N         | responses of one prompt are contiguous (rollout/groups.hpp) |
/// | `mask`          | [N, T]    | response mask (1 = generated token, 0 = padding); ≥ 0       |
/// | `rewards`       | [N, K]    | K ≥ 1 reward components per response (column 0 = the score) |
/// | `token_rewards` | [N, T]    | optional per-token rewards (process rewards, KL-in-reward)  |
/// | `values`        | [N, T]    | optional critic values at rollout time (PPO / GAE)          |
/// | `old_logp`      | [N, T]    | optional rollout-engine (behaviour) log-probs               |
/// | `ref_logp`      | [N, T]    | optional reference-policy log-probs                          |
/// | `truncated`     | N         | optional: response cut at the length cap (no EOS)           |
///
/// An optional field is absent when it has 0 rows. Build the mask from per-response lengths
/// with `response_mask(lengths, T)` (a prefix of length |y_i| per row).
///
/// **Validation** (`validate(batch)`, or `batch.validate()`), each a `rlpo::invalid_argument`
/// whose message starts `rlpo::rollout::validate():`: groups that do not cover the N rows
/// (group ids out of order and groups of size 0 are already rejected when the `Groups` are
/// built), a mask that is not [N, T] or has negative / non-finite entries, a reward matrix that
/// is not [N, K ≥ 1], a NaN or ±inf reward (named with its response and component), optional
/// fields of the wrong shape, NaN in `token_rewards` / `values` / `old_logp` / `ref_logp` under
/// a non-zero mask (masked entries are never read). `response_mask` rejects a length < 0 or
/// beyond T ("lengths beyond T"), and floating lengths that are not whole numbers (NaN, 1e30).

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/groups.hpp>

#include <cmath>
#include <vector>

namespace rlpo::rollout {

/// A [N, T] 0/1 mask whose row i is a prefix of `lengths[i]` ones.
template <class S = float, class Int>
inline Mat<S> response_mask(const std::vector<Int>& lengths, Index T) {
    constexpr const char* fn = "rollout::response_mask";
    RLPO_CHECK(T >= 0, fn, "T: must be >= 0, given ", T);
    Mat<S> m = Mat<S>::Zero(static_cast<Index>(lengths.size()), T);
    for (std::size_t i = 0; i < lengths.size(); ++i) {
        const auto len = static_cast<Index>(detail::integer_entry(fn, "lengths", i, lengths[i]));
        RLPO_CHECK(len >= 0 && len <= T, fn, "lengths: response ", i, " has length ", len,
                   ", beyond [0, T = ", T, "]");
        m.row(static_cast<Index>(i)).head(len).setOnes();
    }
    return m;
}

/// Per-response lengths |y_i| = Σ_t m_it of a mask.
template <class D>
inline std::vector<double> response_lengths(const Eigen::MatrixBase<D>& mask) {
    std::vector<double> out(static_cast<std::size_t>(mask.rows()), 0.0);
    for (Index i = 0; i < mask.rows(); ++i)
        out[static_cast<std::size_t>(i)] =
            static_cast<double>(mask.row(i).template cast<double>().sum());
    return out;
}

template <class S>
struct RolloutBatch {
    Groups groups;
    Mat<S> mask;                  ///< [N, T]
    Mat<S> rewards;               ///< [N, K], K ≥ 1
    Mat<S> token_rewards;         ///< [N, T] or empty
    Mat<S> values;                ///< [N, T] or empty
    Mat<S> old_logp;              ///< [N, T] or empty
    Mat<S> ref_logp;              ///< [N, T] or empty
    std::vector<bool> truncated;  ///< N entries or empty

    Index num_responses() const { return mask.rows(); }
    Index max_length() const { return mask.cols(); }
    Index num_rewards() const { return rewards.cols(); }
    /// Column `k` of the rewards (the score when k = 0).
    Vec<S> reward(Index k = 0) const { return rewards.col(k); }

    void validate() const;
};

namespace detail {
template <class S>
inline void check_token_field(const char* fn, const char* name, const Mat<S>& x,
                              const Mat<S>& mask) {
    if (x.rows() == 0) return;
    ::rlpo::detail::check_same_shape(fn, name, x, "mask", mask);
    for (Index i = 0; i < x.rows(); ++i)
        for (Index t = 0; t < x.cols(); ++t)
            if (mask(i, t) != 0 && std::isnan(static_cast<double>(x(i, t))))
                ::rlpo::detail::fail(fn, name, ": NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
}
}  // namespace detail

/// Check a rollout batch (see the file comment for the list of errors).
template <class S>
inline void validate(const RolloutBatch<S>& b) {
    constexpr const char* fn = "rollout::validate";
    const Index N = b.mask.rows();
    b.groups.check_covers(fn, N);
    ::rlpo::detail::check_mask(fn, b.mask);
    RLPO_CHECK(b.rewards.rows() == N && b.rewards.cols() >= 1, fn, "rewards: expected shape [", N,
               ", K >= 1] (one row per response), given [", b.rewards.rows(), ", ",
               b.rewards.cols(), "]");
    for (Index i = 0; i < N; ++i)
        for (Index k = 0; k < b.rewards.cols(); ++k) {
            const double r = static_cast<double>(b.rewards(i, k));
            RLPO_CHECK(std::isfinite(r), fn, "rewards: ", r, " at response ", i, ", component ", k,
                       " (rewards must be finite)");
        }
    detail::check_token_field(fn, "token_rewards", b.token_rewards, b.mask);
    detail::check_token_field(fn, "values", b.values, b.mask);
    detail::check_token_field(fn, "old_logp", b.old_logp, b.mask);
    detail::check_token_field(fn, "ref_logp", b.ref_logp, b.mask);
    RLPO_CHECK(b.truncated.empty() || static_cast<Index>(b.truncated.size()) == N, fn,
               "truncated: expected ", N, " entries (rows of mask), given ", b.truncated.size());
}

template <class S>
inline void RolloutBatch<S>::validate() const {
    ::rlpo::rollout::validate(*this);
}

}  // namespace rlpo::rollout
