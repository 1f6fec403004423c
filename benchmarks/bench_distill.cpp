// Google Benchmarks of the fused distillation divergences (value + gradient w.r.t. the student
// logits, float), at N = 2048 × V = 32768 and N = 256 × V = 151936, run with
// OMP_NUM_THREADS=2. Counters:
//   bytes_per_second — the bytes that must move (read student and teacher once, write the
//                      gradient once: 12·N·V) divided by the time;
//   roofline         — that rate divided by the triad bandwidth measured in this same process
//                      (bench_bandwidth.cpp, included below), so 1.0 = memory-bound optimum.
#include "bench_bandwidth.cpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::Divergence;

void bench_divergence(benchmark::State& state, Divergence d) {
    const Index N = state.range(0), V = state.range(1);
    rlpo::testing::Generator gen(1);
    Mat<float> z(N, V), y(N, V), g(N, V);
    for (Index k = 0; k < z.size(); ++k) {
        z.data()[k] = static_cast<float>(2.0 * gen.uniform(-1.7, 1.7));
        y.data()[k] = static_cast<float>(2.0 * gen.uniform(-1.7, 1.7));
    }
    g.setZero();
    const Mat<float> mask = Mat<float>::Ones(N, 1);
    rlpo::distill::DistillOptions o = rlpo::distill::DistillOptions::make(d);
    o.beta = 0.5;
    const double bw = rlpo_bw::triad_bytes_per_second();
    for (auto _ : state) {
        const auto r = rlpo::distill::divergence(z, y, mask, o, rlpo::Normalizer{},
                                                 rlpo::write_to<float>(g));
        benchmark::DoNotOptimize(r.value);
        benchmark::ClobberMemory();
    }
    const double bytes = 12.0 * static_cast<double>(N) * static_cast<double>(V);
    state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
    state.counters["roofline"] =
        benchmark::Counter(bytes * static_cast<double>(state.iterations()) / bw,
                           benchmark::Counter::kIsRate);
    state.counters["triad_GBps"] = bw / 1e9;
}

}  // namespace

#define RLPO_BENCH_DIV(NAME, KIND)                                                       \
    static void NAME(benchmark::State& s) { bench_divergence(s, KIND); }                  \
    BENCHMARK(NAME)->Args({2048, 32768})->Args({256, 151936})->UseRealTime()->Unit(     \
        benchmark::kMillisecond)

RLPO_BENCH_DIV(BM_distill_forward_kl, Divergence::ForwardKL);
RLPO_BENCH_DIV(BM_distill_reverse_kl, Divergence::ReverseKL);
RLPO_BENCH_DIV(BM_distill_jsd_0_5, Divergence::JSD);
RLPO_BENCH_DIV(BM_distill_tvd, Divergence::TVD);
