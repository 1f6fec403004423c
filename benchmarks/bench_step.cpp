// The advantage + training-step path at full RL scale: 4096 prompts × 16 responses × 1024
// tokens = 67M tokens, float ([65536, 1024] matrices of 256 MiB each).
//
//   grpo:  scores → GRPO advantages ([B]) → TrainingStep (PPO clip, verl preset, + k3 KL in
//          the loss, token-mean; one pass, advantages read per row) → loss, d/dlogp (caller's
//          buffer), metrics
//   grpo_parts_broadcast: the same with the advantages broadcast to [B, T] and one pass per
//          term (the step before the single pass), for comparison in one run
//   ppo:   outcome rewards ([B], the reward of each response's last token, read per row) →
//          GAE (γ 1, λ 0.95, whitened) → TrainingStep (PPO clip + clipped value loss) → loss,
//          d/dlogp, d/dvalues; the advantages and returns go to buffers reused from call to
//          call (a trainer's), the first call allocating them
//   ppo_token_rewards: the same from a [B, T] token-reward matrix (outcome_token_rewards),
//          for comparison in one run
//   ppo_gae_in_step: the same with GAE inside the step's pass (gae_plan: the whitening
//          statistics, reading values and mask once; then StepInputs::gae forms each row's
//          advantages and returns where they are used, no [B, T] intermediates)
//
// Counters: roofline = (the bytes that must move per token × tokens / time) over the triad
// bandwidth measured just before each call (bench_bandwidth.cpp), median of the iterations;
// roofline_nt the same over the streamed triad (streaming stores, as the step writes a large
// gradient: the upper bound); triad_GBps, triad_nt_GBps those bandwidths. Memory: 6 (grpo) /
// 11 (ppo) such matrices ≈ 1.5 / 2.8 GiB. Size with RLPO_BENCH_STEP_PROMPTS (default 4096) to
// fit smaller machines. RLPO_BENCH_HUGE_PAGES=1: these matrices and the triad's arrays in
// transparent huge pages (bench_bandwidth.cpp, `advise_huge_pages`).
#include "bench_bandwidth.cpp"

#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/train/step.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;

constexpr Index kGroup = 16, kT = 1024;

Index prompts() {
    const char* e = std::getenv("RLPO_BENCH_STEP_PROMPTS");
    return e ? std::atol(e) : 4096;
}

struct Rollout {
    Index N;
    rlpo::Vec<float> scores;
    Mat<float> logp, old, ref, mask, grad;
    Mat<float> values, old_values, grad_values;  // PPO only
    explicit Rollout(Index P, bool critic) : N(P * kGroup) {
        std::mt19937_64 rng(11);
        std::uniform_real_distribution<float> u(0.0f, 1.0f);
        std::normal_distribution<float> nrm(0.0f, 1.0f);
        scores.resize(N);
        logp.resize(N, kT), old.resize(N, kT), ref.resize(N, kT), mask.resize(N, kT);
        grad.resize(N, kT);
        rlpo_bw::advise_huge_pages_of(logp, old, ref, mask, grad);  // before the first touch
        for (Index i = 0; i < N; ++i) {
            scores(i) = u(rng) < 0.4f ? 1.0f : 0.0f;
            const auto len = static_cast<Index>(kT * (0.1f + 0.9f * u(rng)));
            for (Index t = 0; t < kT; ++t) {
                const float lp = -std::abs(nrm(rng)) * 1.5f;
                logp(i, t) = lp;
                old(i, t) = lp + 0.05f * nrm(rng);
                ref(i, t) = lp + 0.2f * nrm(rng);
                mask(i, t) = t < len ? 1.0f : 0.0f;
            }
        }
        if (critic) {
            values.resize(N, kT);
            old_values.resize(N, kT);
            grad_values.resize(N, kT);
            rlpo_bw::advise_huge_pages_of(values, old_values, grad_values);
            values.setZero();
            for (Index k = 0; k < values.size(); ++k) values.data()[k] = 0.4f + 0.1f * nrm(rng);
            old_values = values;
        }
    }
};

Rollout& shared(bool critic) {
    static std::unique_ptr<Rollout> r;
    static bool has_critic = false;
    if (!r || (critic && !has_critic)) {
        r.reset();
        r = std::make_unique<Rollout>(prompts(), critic);
        has_critic = critic;
    }
    return *r;
}

/// Times `call` per iteration against the triad measured just before it
/// (`rlpo_bw::paired_roofline`), for `bytes_per_token` bytes that must move per token.
template <class F>
void timed(benchmark::State& state, Index tokens, double bytes_per_token, F&& call) {
    rlpo_bw::paired_roofline(state, bytes_per_token * static_cast<double>(tokens), call);
    state.SetItemsProcessed(state.iterations() * tokens);
    state.counters["tokens"] = static_cast<double>(tokens);
}

rlpo::train::StepOptions grpo_options() {
    rlpo::train::StepOptions o;
    o.policy.vanilla = rlpo::policy::PPOClipOptions::verl();
    o.kl = rlpo::penalties::KLOptions::verl();
    return o;
}

// GRPO: the step reads logp, old_logp, ref_logp and the mask once and writes ∂/∂logp once
// (20 bytes per float token); the per-sequence advantages are read per row.
void BM_grpo_advantage_and_step(benchmark::State& state) {
    Rollout& r = shared(false);
    const rlpo::train::TrainingStep<float> step(grpo_options());
    const auto groups = rlpo::rollout::Groups::equal(r.N, kGroup);
    timed(state, r.N * kT, 20.0, [&] {
        const rlpo::Vec<float> a = rlpo::rollout::grpo_advantages(r.scores, groups);
        rlpo::train::StepInputs<float> in;
        in.logp = r.logp;
        in.mask = r.mask;
        in.advantages = a;  // [B, 1]: read per row
        in.old_logp = r.old;
        in.ref_logp = r.ref;
        const auto res =
            step(in, {rlpo::write_to(r.grad), rlpo::no_grad<float>(), rlpo::no_grad<float>()});
        benchmark::DoNotOptimize(res.loss);
    });
}

// The same step as before the single pass: advantages broadcast to [B, T], then one pass per
// term (surrogate, then KL adding into the zeroed gradient). Same bytes counted.
void BM_grpo_parts_broadcast(benchmark::State& state) {
    Rollout& r = shared(false);
    rlpo::train::StepOptions o = grpo_options();
    o.fused = false;
    const rlpo::train::TrainingStep<float> step(o);
    const auto groups = rlpo::rollout::Groups::equal(r.N, kGroup);
    timed(state, r.N * kT, 20.0, [&] {
        const rlpo::Vec<float> a = rlpo::rollout::grpo_advantages(r.scores, groups);
        const Mat<float> adv = rlpo::rollout::broadcast_to_tokens(a, r.mask);
        rlpo::train::StepInputs<float> in;
        in.logp = r.logp;
        in.mask = r.mask;
        in.advantages = adv;
        in.old_logp = r.old;
        in.ref_logp = r.ref;
        const auto res =
            step(in, {rlpo::write_to(r.grad), rlpo::no_grad<float>(), rlpo::no_grad<float>()});
        benchmark::DoNotOptimize(res.loss);
    });
}

// PPO: outcome rewards → GAE (whitened) → step with the clipped value loss. What must move:
// read logp, old_logp, the mask, values and old values, write ∂/∂logp and ∂/∂values (28 bytes
// per float token; the rewards, advantages and returns are intermediates). GAE runs before
// the step into the trainer's reused buffers (from the outcome rewards, or from a [B, T]
// token-reward matrix), or inside the step's pass (a plan: one read of the old values and
// the mask, then each row's advantages and returns formed where they are used).
enum class PPOGae { Before, BeforeFromTokenRewards, InStep };

void ppo_gae_and_step(benchmark::State& state, PPOGae where) {
    Rollout& r = shared(true);
    rlpo::train::StepOptions o;
    o.policy.vanilla = rlpo::policy::PPOClipOptions::verl();
    o.value_coef = 1.0;
    const rlpo::train::TrainingStep<float> step(o);
    rlpo::rollout::GAEOptions g;
    g.lambda = 0.95;
    // the trainer's buffers, reused from step to step (allocated by the first call)
    Mat<float> rewards;
    rlpo::rollout::TokenAdvantages<float> ta;
    timed(state, r.N * kT, 28.0, [&] {
        rlpo::train::StepInputs<float> in;
        in.logp = r.logp;
        in.mask = r.mask;
        in.old_logp = r.old;
        in.values = r.values;
        in.old_values = r.old_values;
        rlpo::rollout::GAEPlan plan;
        if (where == PPOGae::InStep) {
            plan = rlpo::rollout::gae_plan(r.scores, r.old_values, r.mask, g);
            in.rewards = r.scores;
            in.gae = &plan;
        } else {
            if (where == PPOGae::BeforeFromTokenRewards) {
                rlpo::rollout::outcome_token_rewards(r.scores, r.mask, rewards);
                rlpo::rollout::gae_advantages(rewards, r.old_values, r.mask, g, ta);
            } else {
                rlpo::rollout::gae_advantages(r.scores, r.old_values, r.mask, g, ta);
            }
            in.advantages = ta.advantages;
            in.returns = ta.returns;
        }
        const auto res = step(
            in, {rlpo::write_to(r.grad), rlpo::no_grad<float>(), rlpo::write_to(r.grad_values)});
        benchmark::DoNotOptimize(res.loss);
    });
}

void BM_ppo_gae_and_step(benchmark::State& state) { ppo_gae_and_step(state, PPOGae::Before); }
void BM_ppo_gae_in_step(benchmark::State& state) { ppo_gae_and_step(state, PPOGae::InStep); }
void BM_ppo_token_rewards(benchmark::State& state) {
    ppo_gae_and_step(state, PPOGae::BeforeFromTokenRewards);
}

}  // namespace

BENCHMARK(BM_grpo_advantage_and_step)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_grpo_parts_broadcast)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_ppo_gae_and_step)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_ppo_gae_in_step)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(BM_ppo_token_rewards)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
