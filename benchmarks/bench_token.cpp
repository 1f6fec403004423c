// Token-level path at B×T = 256×4096, float: PPO clip + dual-clip (verl preset) + k3 KL in the
// loss + token-mean, value and gradient w.r.t. logp into one caller-owned buffer (the way a
// training step composes terms). Also each term alone, and the double version.
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <random>

namespace {

template <class S>
struct TokenBatch {
    rlpo::Mat<S> logp, old, ref, adv, mask, grad;
    TokenBatch(rlpo::Index B, rlpo::Index T) {
        std::mt19937_64 rng(7);
        std::uniform_real_distribution<double> u(0.0, 1.0);
        std::normal_distribution<double> nrm(0.0, 1.0);
        logp.resize(B, T), old.resize(B, T), ref.resize(B, T), adv.resize(B, T);
        mask.resize(B, T), grad.resize(B, T);
        for (rlpo::Index i = 0; i < B; ++i) {
            const double a = nrm(rng);
            const auto len = static_cast<rlpo::Index>(T * (0.25 + 0.75 * u(rng)));
            for (rlpo::Index t = 0; t < T; ++t) {
                const double lp = -std::abs(nrm(rng)) * 2.0;
                logp(i, t) = static_cast<S>(lp);
                old(i, t) = static_cast<S>(lp + 0.3 * nrm(rng));
                ref(i, t) = static_cast<S>(lp + 0.5 * nrm(rng));
                adv(i, t) = static_cast<S>(a);
                mask(i, t) = t < len ? S(1) : S(0);
            }
        }
    }
};

constexpr rlpo::Index kB = 256, kT = 4096;

template <class S>
void BM_ppo_dual_k3_token_mean(benchmark::State& state) {
    TokenBatch<S> b(kB, kT);
    const auto ppo = rlpo::policy::PPOClipOptions::verl();
    const auto kl = rlpo::penalties::KLOptions::verl(rlpo::penalties::KLEstimator::K3);
    for (auto _ : state) {
        auto r1 =
            rlpo::policy::ppo_clip(b.logp, b.old, b.adv, b.mask, ppo, {}, rlpo::write_to(b.grad));
        auto r2 =
            rlpo::penalties::kl_penalty(b.logp, b.ref, b.mask, kl, {}, rlpo::add_to(b.grad, 0.001));
        benchmark::DoNotOptimize(r1.value + r2.value);
        benchmark::DoNotOptimize(b.grad.data());
    }
    state.SetItemsProcessed(state.iterations() * kB * kT);
}
BENCHMARK_TEMPLATE(BM_ppo_dual_k3_token_mean, float)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_ppo_dual_k3_token_mean, double)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ppo_clip_only(benchmark::State& state) {
    TokenBatch<float> b(kB, kT);
    for (auto _ : state) {
        auto r = rlpo::policy::ppo_clip(b.logp, b.old, b.adv, b.mask,
                                        rlpo::policy::PPOClipOptions::verl(), {},
                                        rlpo::write_to(b.grad));
        benchmark::DoNotOptimize(r.value);
    }
    state.SetItemsProcessed(state.iterations() * kB * kT);
}
BENCHMARK(BM_ppo_clip_only)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_k3_only(benchmark::State& state) {
    TokenBatch<float> b(kB, kT);
    for (auto _ : state) {
        auto r = rlpo::penalties::kl_penalty(
            b.logp, b.ref, b.mask, rlpo::penalties::KLOptions::verl(), {}, rlpo::write_to(b.grad));
        benchmark::DoNotOptimize(r.value);
    }
    state.SetItemsProcessed(state.iterations() * kB * kT);
}
BENCHMARK(BM_k3_only)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
