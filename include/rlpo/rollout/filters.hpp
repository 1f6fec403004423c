#pragma once
/// \file
/// Rollout filters: DAPO dynamic sampling (drop groups whose rewards carry no signal) and
/// masking of truncated completions.
///
/// | filter | rule | function |
/// |---|---|---|
/// | dynamic sampling | keep group g iff its scores are not all equal (σ_g > 0) | `dynamic_sampling_filter` |
/// | mask truncated | zero the mask rows of responses cut at the length cap | `mask_truncated` |
///
/// Dynamic sampling: DAPO (Yu et al. 2025, arXiv:2503.14476, eq. 11) keeps a prompt only when
/// 0 < |{correct}| < G, i.e. its group's rewards are not all equal; verl's DAPO trainer keeps a
/// group when the std of its metric is > 0 *or the group has one response*
/// (`DynamicSamplingOptions::verl()`); rlpo drops singletons by default (their advantage is 0
/// under GRPO, so they carry no gradient). "All equal" is bitwise equality, so no tolerance
/// decides it. The caller refills the batch (DAPO samples more prompts) — rlpo only selects.
///
/// Mask truncated: TRL's `mask_truncated_completions` zeroes the completion mask of every
/// completion that did not end with EOS, so truncated text contributes neither loss nor
/// gradient (DAPO §3.4 "overlong filtering").
///
/// **Bad input** (rlpo::invalid_argument): scores/groups size mismatch, NaN / ±inf scores,
/// flags/rows mismatch, bad mask.

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>

#include <vector>

namespace rlpo::rollout {

struct DynamicSamplingOptions {
    bool keep_singletons = false;
    /// verl's DAPO trainer: groups of one response are kept.
    static DynamicSamplingOptions verl() { return DynamicSamplingOptions{true}; }
};

/// What survives a group filter: the kept groups (indices into the input groups), the kept
/// responses (indices into the input batch, in order), and the grouping of the kept batch.
struct GroupSelection {
    std::vector<Index> kept_groups;
    std::vector<Index> kept_responses;
    Groups groups;
    Index num_dropped_groups = 0;
};

/// DAPO dynamic sampling over per-response scores (see the file comment).
template <class D>
GroupSelection dynamic_sampling_filter(const Eigen::MatrixBase<D>& scores, const Groups& groups,
                                       const DynamicSamplingOptions& opts = {}) {
    constexpr const char* fn = "rollout::dynamic_sampling_filter";
    const std::vector<double> s = detail::read_scores(fn, "scores", scores);
    detail::check_groups(fn, "scores", groups, s.size());
    GroupSelection out;
    std::vector<Index> offsets{0};
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        const bool keep = (e - b == 1) ? opts.keep_singletons : !detail::all_equal(s, b, e);
        if (!keep) {
            ++out.num_dropped_groups;
            continue;
        }
        out.kept_groups.push_back(g);
        for (Index k = b; k < e; ++k) out.kept_responses.push_back(k);
        offsets.push_back(offsets.back() + (e - b));
    }
    out.groups = Groups::from_offsets(std::move(offsets));
    return out;
}

/// Rows `rows` of a `[B, T]` matrix (or entries of a vector), in order: applies a
/// `GroupSelection::kept_responses` to any per-response array.
template <class D>
Mat<::rlpo::detail::scalar_t<D>> select_rows(const Eigen::MatrixBase<D>& x,
                                             const std::vector<Index>& rows) {
    using S = ::rlpo::detail::scalar_t<D>;
    Mat<S> out(static_cast<Index>(rows.size()), x.cols());
    for (std::size_t k = 0; k < rows.size(); ++k) {
        RLPO_CHECK(rows[k] >= 0 && rows[k] < x.rows(), "rollout::select_rows", "rows: index ",
                   rows[k], " out of range [0, ", x.rows(), ")");
        out.row(static_cast<Index>(k)) = x.derived().row(rows[k]);
    }
    return out;
}

/// A copy of `mask` with the rows of truncated responses set to 0. `truncated` holds one flag
/// per row (non-zero = the response was cut at the length cap, i.e. has no EOS).
template <class DM, class DF>
Mat<::rlpo::detail::scalar_t<DM>> mask_truncated(const Eigen::MatrixBase<DM>& mask,
                                                 const Eigen::MatrixBase<DF>& truncated) {
    using S = ::rlpo::detail::scalar_t<DM>;
    constexpr const char* fn = "rollout::mask_truncated";
    ::rlpo::detail::check_mask(fn, mask.derived());
    const std::vector<double> f = detail::read_scores(fn, "truncated", truncated);
    RLPO_CHECK(static_cast<Index>(f.size()) == mask.rows(), fn, "truncated: expected ", mask.rows(),
               " entries (rows of mask), given ", f.size());
    Mat<S> out = mask.derived();
    for (Index i = 0; i < mask.rows(); ++i)
        if (f[static_cast<std::size_t>(i)] != 0) out.row(i).setZero();
    return out;
}

/// Flags of the responses whose length reached `max_length` (1 = truncated), from lengths —
/// the rule when the EOS flag is not at hand (a response of exactly the cap is taken as cut).
template <class D>
Vec<::rlpo::detail::scalar_t<D>> truncated_by_length(const Eigen::MatrixBase<D>& lengths,
                                                     double max_length) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::truncated_by_length";
    ::rlpo::detail::check_positive(fn, "max_length", max_length);
    const std::vector<double> l = detail::read_nonnegative(fn, "lengths", lengths);
    Vec<S> out(static_cast<Index>(l.size()));
    for (std::size_t k = 0; k < l.size(); ++k)
        out(static_cast<Index>(k)) = l[k] >= max_length ? S(1) : S(0);
    return out;
}

}  // namespace rlpo::rollout
