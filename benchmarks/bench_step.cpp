// The advantage + training-step path at full RL scale: 4096 prompts × 16 responses × 1024
// tokens = 67M tokens, float ([65536, 1024] matrices of 256 MiB each).
//
//   grpo: scores → GRPO advantages → broadcast over tokens → TrainingStep (PPO clip, verl
//         preset, + k3 KL in the loss, token-mean) → loss, d/dlogp (caller's buffer), metrics
//   ppo:  outcome token rewards → GAE (γ 1, λ 0.95, whitened) → TrainingStep (PPO clip +
//         clipped value loss) → loss, d/dlogp, d/dvalues
//
// Memory: 6 (grpo) / 11 (ppo) such matrices ≈ 1.5 / 2.8 GiB. Size with
// RLPO_BENCH_STEP_PROMPTS (default 4096) to fit smaller machines.
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/train/step.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <random>

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
            values = Mat<float>::Zero(N, kT);
            for (Index k = 0; k < values.size(); ++k) values.data()[k] = 0.4f + 0.1f * nrm(rng);
            old_values = values;
            grad_values.resize(N, kT);
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

void BM_grpo_advantage_and_step(benchmark::State& state) {
    Rollout& r = shared(false);
    rlpo::train::StepOptions o;
    o.policy.vanilla = rlpo::policy::PPOClipOptions::verl();
    o.kl = rlpo::penalties::KLOptions::verl();
    const rlpo::train::TrainingStep<float> step(o);
    const auto groups = rlpo::rollout::Groups::equal(r.N, kGroup);
    for (auto _ : state) {
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
        benchmark::DoNotOptimize(r.grad.data());
    }
    state.SetItemsProcessed(state.iterations() * r.N * kT);
    state.counters["tokens"] = static_cast<double>(r.N * kT);
}

void BM_ppo_gae_and_step(benchmark::State& state) {
    Rollout& r = shared(true);
    rlpo::train::StepOptions o;
    o.policy.vanilla = rlpo::policy::PPOClipOptions::verl();
    o.value_coef = 1.0;
    const rlpo::train::TrainingStep<float> step(o);
    rlpo::rollout::GAEOptions g;
    g.lambda = 0.95;
    for (auto _ : state) {
        const Mat<float> rewards = rlpo::rollout::outcome_token_rewards(r.scores, r.mask);
        const auto ta = rlpo::rollout::gae_advantages(rewards, r.old_values, r.mask, g);
        rlpo::train::StepInputs<float> in;
        in.logp = r.logp;
        in.mask = r.mask;
        in.advantages = ta.advantages;
        in.old_logp = r.old;
        in.values = r.values;
        in.old_values = r.old_values;
        in.returns = ta.returns;
        const auto res = step(
            in, {rlpo::write_to(r.grad), rlpo::no_grad<float>(), rlpo::write_to(r.grad_values)});
        benchmark::DoNotOptimize(res.loss);
        benchmark::DoNotOptimize(r.grad.data());
    }
    state.SetItemsProcessed(state.iterations() * r.N * kT);
    state.counters["tokens"] = static_cast<double>(r.N * kT);
}

}  // namespace

BENCHMARK(BM_grpo_advantage_and_step)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
BENCHMARK(BM_ppo_gae_and_step)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
