#pragma once
/// \file
/// Data-parallel group estimators and filters: GRPO (group or batch std), GDPO, RLOO, OPO,
/// REINFORCE++-baseline and DAPO dynamic sampling over a mini-batch whose responses are
/// sharded over ranks. The token-level ones without groups (whitening, REINFORCE++, GAE) take
/// the reductions directly (`rollout::whiten(x, mask, opts, red)`, …, rollout/returns.hpp).
///
/// **Layout rule: whole groups per rank.** Every response of a group (a prompt's G samples)
/// must sit on one rank, the rank's responses a contiguous block of the global batch (blocks in
/// rank order, sizes may differ, a rank may hold none). Group statistics then stay local and
/// only batch-level statistics travel (GRPO's batch std: three summed values; REINFORCE++-
/// baseline's whitening: three). Each function takes the rank's `group_ids`, one per response,
/// global ids (the prompt's index or uid in the mini-batch; any integers, exactly representable
/// in a double, |id| ≤ 2^53). The ids of each group must be contiguous on the rank (as
/// `Groups::from_ids`); an id found on two ranks is a group that straddles ranks and is
/// rejected on every rank with rlpo::invalid_argument naming the id and the two ranks (the
/// check gathers one id per group: 8 bytes per group).

#include <rlpo/core/error.hpp>
#include <rlpo/dist/reductions.hpp>
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/filters.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/rollout/returns.hpp>

#include <cmath>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace rlpo::dist {

/// The rank's `Groups` from its global `group_ids`, after checking that no group straddles
/// ranks (see the file comment; one gather of one value per local group). `function` names the
/// caller in errors.
template <class Int>
inline rollout::Groups whole_groups(const char* function, const std::vector<Int>& group_ids,
                                    const Reductions& red) {
    rollout::Groups g = rollout::Groups::from_ids(group_ids);
    if (red.local()) return g;
    std::vector<double> firsts;
    firsts.reserve(static_cast<std::size_t>(g.num_groups()));
    for (Index k = 0; k < g.num_groups(); ++k) {
        const auto i = static_cast<std::size_t>(g.begin(k));
        const std::int64_t id =
            rollout::detail::integer_entry(function, "group_ids", i, group_ids[i]);
        RLPO_CHECK(id <= (std::int64_t(1) << 53) && id >= -(std::int64_t(1) << 53), function,
                   "group_ids: id ", id, " at response ", i,
                   " is beyond 2^53 (ids travel between ranks as doubles)");
        firsts.push_back(static_cast<double>(id));
    }
    const auto all = red.gather(firsts);
    std::unordered_map<double, int> owner;
    for (int r = 0; r < static_cast<int>(all.size()); ++r)
        for (double id : all[static_cast<std::size_t>(r)]) {
            const auto it = owner.emplace(id, r);
            RLPO_CHECK(it.second, function, "group_ids: group ", static_cast<std::int64_t>(id),
                       " has responses on rank ", it.first->second, " and on rank ", r,
                       "; each rank must hold whole groups (every response of a prompt on one "
                       "rank)");
        }
    return g;
}

/// `rollout::grpo_advantages` of the rank's responses in a sharded batch (layout rule in the
/// file comment): group centring and group std local, the batch std (`AdvantageScale::Batch`)
/// over all ranks. Equals the rank's block of one call on the whole batch.
template <class D, class Int>
Vec<::rlpo::detail::scalar_t<D>> grpo_advantages(const Eigen::MatrixBase<D>& scores,
                                                 const std::vector<Int>& group_ids,
                                                 const rollout::GRPOOptions& opts,
                                                 const Reductions& red) {
    const auto g = whole_groups("dist::grpo_advantages", group_ids, red);
    return rollout::grpo_advantages(scores, g, opts, red);
}

/// `rollout::gdpo_advantages` on a sharded batch: per-group component normalisation local,
/// the final batch normalisation over all ranks.
template <class D, class Int>
Vec<::rlpo::detail::scalar_t<D>> gdpo_advantages(const Eigen::MatrixBase<D>& rewards,
                                                 const std::vector<Int>& group_ids,
                                                 const rollout::GDPOOptions& opts,
                                                 const Reductions& red) {
    const auto g = whole_groups("dist::gdpo_advantages", group_ids, red);
    return rollout::gdpo_advantages(rewards, g, opts, red);
}

/// `rollout::rloo_advantages` on a sharded batch: whole groups make it local (the check is the
/// only communication).
template <class D, class Int>
Vec<::rlpo::detail::scalar_t<D>> rloo_advantages(const Eigen::MatrixBase<D>& scores,
                                                 const std::vector<Int>& group_ids,
                                                 const rollout::RLOOOptions& opts,
                                                 const Reductions& red) {
    return rollout::rloo_advantages(scores, whole_groups("dist::rloo_advantages", group_ids, red),
                                    opts);
}

/// `rollout::opo_advantages` on a sharded batch: local once the groups are whole.
template <class DS, class DL, class Int>
Vec<::rlpo::detail::scalar_t<DS>> opo_advantages(const Eigen::MatrixBase<DS>& scores,
                                                 const Eigen::MatrixBase<DL>& lengths,
                                                 const std::vector<Int>& group_ids,
                                                 const rollout::OPOOptions& opts,
                                                 const Reductions& red) {
    return rollout::opo_advantages(scores, lengths,
                                   whole_groups("dist::opo_advantages", group_ids, red), opts);
}

/// `rollout::reinforce_pp_baseline_advantages` on a sharded batch: group means local, the
/// whitening over all ranks' unmasked tokens.
template <class DS, class DM, class Int>
Mat<::rlpo::detail::scalar_t<DM>> reinforce_pp_baseline_advantages(
    const Eigen::MatrixBase<DS>& scores, const std::vector<Int>& group_ids,
    const Eigen::MatrixBase<DM>& mask, const rollout::ReinforcePPBaselineOptions& opts,
    const Reductions& red) {
    const auto g = whole_groups("dist::reinforce_pp_baseline_advantages", group_ids, red);
    return rollout::reinforce_pp_baseline_advantages(scores, g, mask, opts, red);
}

/// DAPO dynamic sampling on a sharded batch: the rank's selection (`local`, indices into the
/// rank's groups and responses) and the counts over all ranks, which decide whether the
/// trainer samples more prompts (one sum of three values).
struct DistGroupSelection {
    rollout::GroupSelection local;
    double kept_groups = 0;     ///< Σ over ranks of the kept groups
    double dropped_groups = 0;  ///< Σ over ranks of the dropped groups
    double kept_responses = 0;  ///< Σ over ranks of the kept responses
};

template <class D, class Int>
DistGroupSelection dynamic_sampling_filter(const Eigen::MatrixBase<D>& scores,
                                           const std::vector<Int>& group_ids,
                                           const rollout::DynamicSamplingOptions& opts,
                                           const Reductions& red) {
    DistGroupSelection out;
    out.local = rollout::dynamic_sampling_filter(
        scores, whole_groups("dist::dynamic_sampling_filter", group_ids, red), opts);
    double c[3] = {static_cast<double>(out.local.kept_groups.size()),
                   static_cast<double>(out.local.num_dropped_groups),
                   static_cast<double>(out.local.kept_responses.size())};
    red.sum(c, 3);
    out.kept_groups = c[0];
    out.dropped_groups = c[1];
    out.kept_responses = c[2];
    return out;
}

}  // namespace rlpo::dist
