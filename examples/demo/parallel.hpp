#pragma once
// Data-parallel training for the demo (rlpo_demo_mpi, `scripts/demo.sh --ranks N`): each
// mini-batch is cut into kShards blocks of whole groups; rank r of N trains on the blocks
// [r·kShards/N, (r + 1)·kShards/N). Per step every rank
//   * samples the same rollout from the shared seed (a real trainer samples per rank; here the
//     redundant sampling keeps every rank's copy of the rollout identical),
//   * computes the advantages of its own rows with the library's reductions
//     (dist::grpo_advantages / rloo, DAPO's dynamic_sampling_filter, GAE whitened over all
//     ranks' tokens, KL-in-reward metrics),
//   * runs rlpo's training step on each of its blocks with the normaliser of the whole
//     mini-batch (dist::with_global_counts) and back-propagates each block separately,
//   * exchanges the blocks' parameter gradients (`exchange`: MPI_Allgather in the demo) and adds
//     them in block order, so every rank takes the same Adam step,
//   * reduces the step's loss and metrics (dist::reduce).
// The blocks are the same whatever N divides kShards, and their gradients are added in the same
// order, so N = 1, 2 and 4 train the same model bit for bit; only the whitened GAE advantages
// (`--objective ppo`) depend on N, through the rounding of their sums over ranks.
#include "model.hpp"
#include "objectives.hpp"
#include "report.hpp"

#include <rlpo/dist/dist.hpp>

#include <chrono>
#include <functional>
#include <stdexcept>
#include <vector>

namespace demo {

constexpr int kShards = 4;

/// Every rank's `mine` (equal sizes), concatenated in rank order.
using Exchange = std::function<std::vector<float>(const std::vector<float>& mine)>;

/// The rows a rank owns: its blocks of every mini-batch, in row order.
inline std::vector<Index> owned_rows(Index N, int minibatches, int group, int rank, int ranks) {
    const Index mb = N / minibatches, per_shard = mb / kShards;
    if (mb % kShards != 0 || per_shard % group != 0)
        throw std::invalid_argument(
            "--ranks: each mini-batch must split into 4 blocks of whole "
            "groups (prompts divisible by 4 x mini-batches)");
    std::vector<Index> rows;
    for (int m = 0; m < minibatches; ++m)
        for (int s = rank * kShards / ranks; s < (rank + 1) * kShards / ranks; ++s)
            for (Index k = 0; k < per_shard; ++k) rows.push_back(m * mb + s * per_shard + k);
    return rows;
}

/// `prepare` (objectives.hpp) on the rank's rows, with the reductions for what is batch-level.
template <class R>
Prepared prepare_rows(const Objective& obj, const R& r, const std::vector<Index>& rows, int group,
                      const RM& ref_logp, const RM& values_old, const rlpo::dist::Reductions& red) {
    namespace ro = rlpo::rollout;
    namespace rd = rlpo::dist;
    Prepared p;
    p.mask = RM::Zero(r.N, r.T);
    p.advantages = RM::Zero(r.N, r.T);
    p.returns = RM::Zero(r.N, r.T);
    const RM mask = ro::select_rows(r.mask, rows);
    RM m = mask;
    rlpo::Vec<float> score = ro::select_rows(r.score, rows);
    std::vector<Index> ids;
    for (Index i : rows) ids.push_back(i / group);  // the prompt of the row: global group id
    if (obj.overlong) {
        const rlpo::Vec<float> len = ro::lengths_from_mask(mask);
        score +=
            ro::overlong_penalty(len, ro::OverlongOptions::dapo(static_cast<double>(r.T), 2.0));
    }
    if (obj.dynamic_sampling) {
        const auto sel = rd::dynamic_sampling_filter(score, ids, {}, red);
        std::vector<bool> keep(rows.size(), false);
        for (Index k : sel.local.kept_responses) keep[static_cast<std::size_t>(k)] = true;
        for (std::size_t k = 0; k < rows.size(); ++k)
            if (!keep[k]) m.row(static_cast<Index>(k)).setZero();
        p.dropped = sel.dropped_groups / (sel.dropped_groups + sel.kept_groups);
    }
    RM adv_rows, ret_rows;
    switch (obj.advantage) {
        case Advantage::GRPO:
        case Advantage::DrGRPO:
        case Advantage::RLOO: {
            rlpo::Vec<float> a;
            if (obj.advantage == Advantage::RLOO)
                a = rd::rloo_advantages(score, ids, {}, red);
            else
                a = rd::grpo_advantages(score, ids,
                                        obj.advantage == Advantage::DrGRPO
                                            ? ro::GRPOOptions::dr_grpo()
                                            : ro::GRPOOptions{},
                                        red);
            adv_rows = ro::broadcast_to_tokens(a, m);
            break;
        }
        case Advantage::GAE: {
            RM token_rewards = ro::outcome_token_rewards(score, m);
            if (obj.step.kl && obj.step.kl_placement == rlpo::train::KLPlacement::Reward) {
                auto kr = ro::kl_in_reward(token_rewards, ro::select_rows(r.old_logp, rows),
                                           ro::select_rows(ref_logp, rows), m, obj.step.kl_coef,
                                           *obj.step.kl);
                token_rewards = kr.rewards;
                p.kl = rd::reduce_metrics(kr.metrics, red)["reward_kl_penalty"];
            }
            ro::GAEOptions g;
            g.lambda = 0.95;
            const auto ta =
                ro::gae_advantages(token_rewards, ro::select_rows(values_old, rows), m, g, red);
            adv_rows = ta.advantages;
            ret_rows = ta.returns;
            break;
        }
    }
    for (std::size_t k = 0; k < rows.size(); ++k) {
        const Index i = rows[k], kk = static_cast<Index>(k);
        p.mask.row(i) = m.row(kk);
        p.advantages.row(i) = adv_rows.row(kk);
        if (ret_rows.rows() > 0) p.returns.row(i) = ret_rows.row(kk);
    }
    return p;
}

inline std::vector<float> flatten(const std::array<RM, Net::kParams>& g) {
    std::vector<float> v;
    for (const auto& x : g) v.insert(v.end(), x.data(), x.data() + x.size());
    return v;
}

/// Σ over the blocks of every rank (block order) of the flattened gradients → `g`.
inline void sum_blocks(const std::vector<float>& all, std::size_t per_block,
                       std::array<RM, Net::kParams>& g) {
    std::size_t off = 0;
    for (auto& x : g) {
        for (Index k = 0; k < x.size(); ++k) {
            float s = 0.0f;
            for (std::size_t b = 0; b * per_block < all.size(); ++b)
                s += all[b * per_block + off + static_cast<std::size_t>(k)];
            x.data()[k] = s;
        }
        off += static_cast<std::size_t>(x.size());
    }
}

}  // namespace demo
