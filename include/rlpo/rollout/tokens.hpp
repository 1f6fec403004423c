#pragma once
/// \file
/// Moving between per-response and per-token (`[B, T]`) quantities: the response lengths of a
/// mask (`lengths_from_mask`), per-response advantages broadcast over a response's tokens
/// (`broadcast_to_tokens`, what a policy surrogate takes) and outcome scores placed at the
/// last token as token-level rewards (`outcome_token_rewards`, verl's reward manager). Values
/// only (no gradient). Bad input (rlpo::invalid_argument): a NaN, ±inf or non-vector
/// per-response input, a size other than the mask's rows, a mask entry that is NaN or
/// negative (`for_mask_rows`).

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/detail/scores.hpp>

#include <algorithm>
#include <vector>

namespace rlpo::rollout {

/// Number of unmasked tokens (m ≠ 0) of each row of a `[B, T]` mask: the response lengths.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> lengths_from_mask(const Eigen::MatrixBase<D>& mask) {
    using S = ::rlpo::detail::scalar_t<D>;
    const ConstMatRef<S> m(mask.derived());
    Vec<S> len(m.rows());
    const Index T = m.cols();
    detail::for_mask_rows<S>("rollout::lengths_from_mask", m, [&](Index i, const S* row) {
        len(i) = static_cast<S>(
            (Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>(row, T) != S(0)).count());
    });
    return len;
}

/// Per-response advantages broadcast over the tokens of each response: A_it = a_i where
/// m_it ≠ 0, and exactly 0 where m_it = 0 (verl multiplies by the 0/1 response mask; a
/// fractional mask weight is the loss's business and is not folded in here).
template <class DA, class DM>
Mat<::rlpo::detail::scalar_t<DM>> broadcast_to_tokens(const Eigen::MatrixBase<DA>& seq_values,
                                                      const Eigen::MatrixBase<DM>& mask) {
    using S = ::rlpo::detail::scalar_t<DM>;
    constexpr const char* fn = "rollout::broadcast_to_tokens";
    const std::vector<double> a = detail::read_scores(fn, "seq_values", seq_values);
    const ConstMatRef<S> m(mask.derived());
    RLPO_CHECK(static_cast<Index>(a.size()) == m.rows(), fn, "seq_values: expected ", m.rows(),
               " entries (rows of mask), given ", a.size());
    Mat<S> out(m.rows(), m.cols());
    const Index T = m.cols();
    detail::for_mask_rows<S>(fn, m, [&](Index i, const S* row) {
        const S v = static_cast<S>(a[static_cast<std::size_t>(i)]);
        S* o = out.data() + i * T;
        for (Index t = 0; t < T; ++t) o[t] = row[t] != S(0) ? v : S(0);
    });
    return out;
}

/// Outcome scores placed as token-level rewards: r_it = s_i at the last unmasked token of row i
/// (where verl's reward manager puts it), 0 elsewhere; an empty row gets no reward.
/// The overload with `out` writes into it (resized only when its shape differs: a trainer's
/// buffer is reused from step to step).
template <class DA, class DM>
void outcome_token_rewards(const Eigen::MatrixBase<DA>& scores, const Eigen::MatrixBase<DM>& mask,
                           Mat<::rlpo::detail::scalar_t<DM>>& out) {
    using S = ::rlpo::detail::scalar_t<DM>;
    constexpr const char* fn = "rollout::outcome_token_rewards";
    const std::vector<double> s = detail::read_scores(fn, "scores", scores);
    const ConstMatRef<S> m(mask.derived());
    RLPO_CHECK(static_cast<Index>(s.size()) == m.rows(), fn, "scores: expected ", m.rows(),
               " entries (rows of mask), given ", s.size());
    if (out.rows() != m.rows() || out.cols() != m.cols()) out.resize(m.rows(), m.cols());
    const Index T = m.cols();
    detail::for_mask_rows<S>(fn, m, [&](Index i, const S* row) {
        S* o = out.data() + i * T;
        Index last = T - 1;  // the last unmasked token, found from the end
        while (last >= 0 && row[last] == S(0)) --last;
        std::fill(o, o + T, S(0));
        if (last >= 0) o[last] = static_cast<S>(s[static_cast<std::size_t>(i)]);
    });
}

template <class DA, class DM>
Mat<::rlpo::detail::scalar_t<DM>> outcome_token_rewards(const Eigen::MatrixBase<DA>& scores,
                                                        const Eigen::MatrixBase<DM>& mask) {
    Mat<::rlpo::detail::scalar_t<DM>> out;
    outcome_token_rewards(scores, mask, out);
    return out;
}

}  // namespace rlpo::rollout
