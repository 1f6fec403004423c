// Google Benchmarks of the fused distillation divergences (value + gradient w.r.t. the student
// logits, float), at N = 2048 × V = 32768 and N = 256 × V = 151936, run with
// OMP_NUM_THREADS=2. Counters:
//   bytes_per_second — the bytes that must move (read student and teacher once, write the
//                      gradient once: 12·N·V) divided by the time;
//   roofline         — paired with the machine's bandwidth of the moment: before each timed
//                      call (outside the timing) one triad pass over 3 × 256 MiB runs in this
//                      process (bench_bandwidth.cpp, included below); the call's bytes/s over
//                      that pass's bytes/s is one ratio, and the counter is the median ratio of
//                      the benchmark's iterations. On a shared machine whose bandwidth drifts
//                      during a run this compares like with like. The triad's ordinary stores
//                      read each output line first, which the kernels' streaming stores do
//                      not: this ratio can exceed 1 (by up to 4/3);
//   roofline_nt      — the same against a streamed triad pass run beside it (streaming stores,
//                      3 arrays moved as counted): the memory-bound optimum, 1.0;
//   triad_GBps, triad_nt_GBps — the median bandwidths of those passes;
//   roofline_start   — the same rate divided instead by the best of 7 triad passes measured
//                      once when the process starts (the earlier definition, for comparison).
#include "bench_bandwidth.cpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/penalties/vocab_divergence.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <chrono>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::Divergence;

void bench_divergence(benchmark::State& state, Divergence d) {
    const Index N = state.range(0), V = state.range(1);
    rlpo::testing::Generator gen(1);
    Mat<float> z(N, V), y(N, V), g(N, V);
    rlpo_bw::advise_huge_pages_of(z, y, g);
    for (Index k = 0; k < z.size(); ++k) {
        z.data()[k] = static_cast<float>(2.0 * gen.uniform(-1.7, 1.7));
        y.data()[k] = static_cast<float>(2.0 * gen.uniform(-1.7, 1.7));
    }
    g.setZero();
    const Mat<float> mask = Mat<float>::Ones(N, 1);
    rlpo::distill::DistillOptions o = rlpo::distill::DistillOptions::make(d);
    o.beta = 0.5;
    const double bw = rlpo_bw::triad_bytes_per_second();
    const double bytes = 12.0 * static_cast<double>(N) * static_cast<double>(V);
    rlpo_bw::paired_roofline(state, bytes, [&] {
        const auto r =
            rlpo::distill::divergence(z, y, mask, o, rlpo::Normalizer{}, rlpo::write_to<float>(g));
        benchmark::DoNotOptimize(r.value);
    });
    state.counters["roofline_start"] = benchmark::Counter(
        bytes * static_cast<double>(state.iterations()) / bw, benchmark::Counter::kIsRate);
}

}  // namespace

#define RLPO_BENCH_DIV(NAME, KIND)                                       \
    static void NAME(benchmark::State& s) { bench_divergence(s, KIND); } \
    BENCHMARK(NAME)                                                      \
        ->Args({2048, 32768})                                            \
        ->Args({256, 151936})                                            \
        ->UseRealTime()                                                  \
        ->Unit(benchmark::kMillisecond)

RLPO_BENCH_DIV(BM_distill_forward_kl, Divergence::ForwardKL);
RLPO_BENCH_DIV(BM_distill_reverse_kl, Divergence::ReverseKL);
RLPO_BENCH_DIV(BM_distill_jsd_0_5, Divergence::JSD);
RLPO_BENCH_DIV(BM_distill_tvd, Divergence::TVD);

// The full-vocabulary penalties of rlpo/penalties (policy vs reference, value + gradient w.r.t.
// the policy logits, float storage, double arithmetic as documented there), at 512 × 32768.
namespace {

void bench_vocab_penalty(benchmark::State& state, rlpo::penalties::VocabDivergence d) {
    const Index N = state.range(0), V = state.range(1);
    rlpo::testing::Generator gen(2);
    Mat<float> z(N, V), zr(N, V), g(N, V);
    rlpo_bw::advise_huge_pages_of(z, zr, g);
    for (Index k = 0; k < z.size(); ++k) {
        z.data()[k] = static_cast<float>(2.0 * gen.uniform(-1.7, 1.7));
        zr.data()[k] = static_cast<float>(2.0 * gen.uniform(-1.7, 1.7));
    }
    g.setZero();
    const Mat<float> mask = Mat<float>::Ones(N, 1);
    rlpo::penalties::VocabDivergenceOptions o;
    o.divergence = d;
    for (auto _ : state) {
        const auto r = rlpo::penalties::vocab_divergence(z, zr, mask, o, rlpo::Normalizer{},
                                                         rlpo::write_to<float>(g));
        benchmark::DoNotOptimize(r.value);
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(
        static_cast<int64_t>(12.0 * static_cast<double>(N) * static_cast<double>(V)) *
        state.iterations());
}

}  // namespace

#define RLPO_BENCH_VOCAB(NAME, KIND)                                        \
    static void NAME(benchmark::State& s) { bench_vocab_penalty(s, KIND); } \
    BENCHMARK(NAME)->Args({512, 32768})->UseRealTime()->Unit(benchmark::kMillisecond)

RLPO_BENCH_VOCAB(BM_penalty_vocab_kl, rlpo::penalties::VocabDivergence::ReverseKL);
RLPO_BENCH_VOCAB(BM_penalty_vocab_forward_kl, rlpo::penalties::VocabDivergence::ForwardKL);
RLPO_BENCH_VOCAB(BM_penalty_vocab_chi2, rlpo::penalties::VocabDivergence::ChiSquared);
RLPO_BENCH_VOCAB(BM_penalty_vocab_tv, rlpo::penalties::VocabDivergence::TotalVariation);
RLPO_BENCH_VOCAB(BM_penalty_vocab_js, rlpo::penalties::VocabDivergence::JensenShannon);
