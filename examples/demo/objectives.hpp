#pragma once
// The objectives the demo can train with: each is one of rlpo's advantage estimators, optional
// reward shaping / filtering, and the options of rlpo's training step, configured as the
// papers (and verl / TRL) configure them.
#include "model.hpp"

#include <rlpo/policy/policy_loss.hpp>
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/filters.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/rollout/shaping.hpp>
#include <rlpo/train/step.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace demo {

enum class Advantage { GRPO, DrGRPO, RLOO, GAE };

struct Objective {
    std::string name;
    Advantage advantage = Advantage::GRPO;
    rlpo::train::StepOptions step;
    bool critic = false;            // PPO: learn a value function, GAE advantages
    bool dynamic_sampling = false;  // DAPO: drop groups whose rewards are all equal
    bool overlong = false;          // DAPO / --length-shaping: soft overlong penalty on the score
};

inline const char* kUsage =
    "usage: rlpo_demo [--objective grpo|drgrpo|rloo|dapo|gspo|cispo|ppo] [--seed N]\n"
    "                 [--steps N] [--prompts P] [--group G] [--lr X] [--no-kl] [--kl-coef X]\n"
    "                 [--entropy-coef X] [--length-shaping] [--compare] [--out DIR] [--quiet]\n"
    "  --compare trains grpo, drgrpo, rloo, dapo, gspo, cispo and ppo and plots them together\n";

inline std::vector<std::string> compare_set() {
    return {"grpo", "drgrpo", "rloo", "dapo", "gspo", "cispo", "ppo"};
}

/// `kl`: a KL penalty at all (β = kl_coef): in the loss (k3, GRPO-style) for the group
/// objectives, in the reward (k1, PPO-RLHF-style) for PPO.
inline Objective make_objective(const std::string& name, bool kl, double kl_coef,
                                double entropy_coef, bool length_shaping) {
    using rlpo::Aggregation;
    namespace pen = rlpo::penalties;
    Objective o;
    o.name = name;
    o.overlong = length_shaping;
    rlpo::train::StepOptions& s = o.step;
    s.entropy_coef = entropy_coef;
    s.kl_coef = kl_coef;
    if (kl) s.kl = pen::KLOptions::verl(pen::KLEstimator::K3);
    if (name == "grpo") {
        // GRPO (Shao et al. 2024): (r − mean)/std per group, PPO clip, k3 KL in the loss,
        // mean over responses of per-response token means.
        s.norm.mode = Aggregation::SeqMeanTokenMean;
    } else if (name == "drgrpo") {
        // Dr.GRPO (Liu et al. 2025): no std division, a constant normaliser (T) instead of |y|.
        o.advantage = Advantage::DrGRPO;
        s.norm.mode = Aggregation::SeqMeanTokenSumNorm;
    } else if (name == "rloo") {
        // RLOO (Ahmadian et al. 2024): leave-one-out baseline.
        o.advantage = Advantage::RLOO;
        s.norm.mode = Aggregation::TokenMean;
    } else if (name == "dapo") {
        // DAPO (Yu et al. 2025): clip-higher (0.2 / 0.28), token-mean, dynamic sampling, soft
        // overlong penalty. The paper also drops the KL term; the demo keeps it (--no-kl drops
        // it): dynamic sampling removes a collapsed group from the loss, entropy bonus included,
        // and with neither KL nor a larger model such prompts stay wrong for good.
        s.policy.vanilla = rlpo::policy::PPOClipOptions::dapo();
        s.norm.mode = Aggregation::TokenMean;
        o.dynamic_sampling = true;
        o.overlong = true;
    } else if (name == "gspo") {
        // GSPO (Zheng et al. 2025): sequence-level ratio and clipping (verl preset).
        s.policy = rlpo::policy::make_policy_loss("gspo");
        s.norm.mode = Aggregation::SeqMeanTokenMean;
    } else if (name == "cispo") {
        // CISPO (MiniMax 2025): clipped, detached IS weight times logp (verl preset).
        s.policy = rlpo::policy::make_policy_loss("cispo");
        s.norm.mode = Aggregation::TokenMean;
    } else if (name == "ppo") {
        // PPO-RLHF: a critic, GAE (γ = 1, λ = 0.95, whitened), k1 KL in the reward.
        o.advantage = Advantage::GAE;
        o.critic = true;
        s.norm.mode = Aggregation::TokenMean;
        s.value_coef = 1.0;
        if (kl) {
            s.kl = pen::KLOptions::verl(pen::KLEstimator::K1);
            s.kl_placement = rlpo::train::KLPlacement::Reward;
        }
    } else {
        throw std::invalid_argument("unknown objective '" + name +
                                    "' (grpo, drgrpo, rloo, dapo, gspo, cispo, ppo)");
    }
    return o;
}

/// Advantages (and returns for PPO) of one rollout, and the mask the loss uses.
struct Prepared {
    RM advantages, returns, mask;
    double kl = 0.0;       // KL-in-reward mean (PPO)
    double dropped = 0.0;  // fraction of groups dropped by dynamic sampling
};

template <class R>
Prepared prepare(const Objective& obj, const R& r, const rlpo::rollout::Groups& groups,
                 const RM& ref_logp, const RM& values_old) {
    namespace ro = rlpo::rollout;
    Prepared p;
    p.mask = r.mask;
    rlpo::Vec<float> score = r.score;
    if (obj.overlong) {
        // soft overlong penalty over the last 2 positions of the T-token cap
        const rlpo::Vec<float> len = ro::lengths_from_mask(r.mask);
        score +=
            ro::overlong_penalty(len, ro::OverlongOptions::dapo(static_cast<double>(r.T), 2.0));
    }
    if (obj.dynamic_sampling) {
        // DAPO keeps sampling until the batch is full of informative groups; the demo keeps
        // its batch size and masks out the groups whose rewards are all equal.
        const ro::GroupSelection sel = ro::dynamic_sampling_filter(score, groups);
        std::vector<bool> keep(static_cast<std::size_t>(r.N), false);
        for (Index k : sel.kept_responses) keep[static_cast<std::size_t>(k)] = true;
        for (Index i = 0; i < r.N; ++i)
            if (!keep[static_cast<std::size_t>(i)]) p.mask.row(i).setZero();
        p.dropped =
            static_cast<double>(sel.num_dropped_groups) / static_cast<double>(groups.num_groups());
    }
    rlpo::Vec<float> adv;
    switch (obj.advantage) {
        case Advantage::GRPO: adv = ro::grpo_advantages(score, groups); break;
        case Advantage::DrGRPO:
            adv = ro::grpo_advantages(score, groups, ro::GRPOOptions::dr_grpo());
            break;
        case Advantage::RLOO: adv = ro::rloo_advantages(score, groups); break;
        case Advantage::GAE: {
            RM token_rewards = ro::outcome_token_rewards(score, p.mask);
            if (obj.step.kl && obj.step.kl_placement == rlpo::train::KLPlacement::Reward) {
                const auto kr = ro::kl_in_reward(token_rewards, r.old_logp, ref_logp, p.mask,
                                                 obj.step.kl_coef, *obj.step.kl);
                token_rewards = kr.rewards;
                p.kl = kr.metrics["reward_kl_penalty"];
            }
            ro::GAEOptions g;
            g.lambda = 0.95;
            const auto ta = ro::gae_advantages(token_rewards, values_old, p.mask, g);
            p.advantages = ta.advantages;
            p.returns = ta.returns;
            return p;
        }
    }
    p.advantages = ro::broadcast_to_tokens(adv, p.mask);
    return p;
}

}  // namespace demo
