// Google Benchmarks of the fused token log-probabilities (rlpo/logits/token_logps.hpp), float
// logits, at N = 2048 × V = 32768 and N = 256 × V = 151936, run with OMP_NUM_THREADS=2:
//   BM_token_logps_vjp      forward + backward in one call (upstream g given), gradient written
//                           into a preallocated [N, V] buffer: bytes = 8·N·V (one read of the
//                           logits, one write of the gradient);
//   BM_token_logps_forward  forward only: bytes = 4·N·V;
//   BM_token_logps_backward backward from the saved rows: bytes = 8·N·V.
// Counters as in bench_distill.cpp: `roofline` = the call's bytes/s over the bandwidth of one
// triad pass run just before it (outside the timing), median over the iterations;
// `roofline_nt` the same over a streamed triad pass; `triad_GBps`, `triad_nt_GBps` the median
// bandwidths.
#include "bench_bandwidth.cpp"

#include <rlpo/logits/token_logps.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;

enum class What { Vjp, Forward, Backward };

void bench_token_logps(benchmark::State& state, What what) {
    const Index N = state.range(0), V = state.range(1);
    rlpo::testing::Generator gen(1);
    Mat<float> z(N, V), grad(N, V);
    rlpo_bw::advise_huge_pages_of(z, grad);
    for (Index k = 0; k < z.size(); ++k)
        z.data()[k] = static_cast<float>(2.0 * gen.uniform(-1.7, 1.7));
    grad.setZero();
    Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> labels(N, 1);
    Mat<float> up(N, 1);
    for (Index n = 0; n < N; ++n) {
        labels(n, 0) = static_cast<std::int64_t>(gen.uniform() * static_cast<double>(V)) % V;
        up(n, 0) = static_cast<float>(gen.uniform(-1.0, 1.0));
    }
    const Mat<float> mask = Mat<float>::Ones(N, 1);
    const rlpo::logits::TokenLogpsOptions o;
    const auto fwd = rlpo::logits::token_logps(z, labels, mask, o);
    const double bytes =
        (what == What::Forward ? 4.0 : 8.0) * static_cast<double>(N) * static_cast<double>(V);
    rlpo_bw::paired_roofline(state, bytes, [&] {
        double v = 0;
        if (what == What::Vjp)
            v = rlpo::logits::token_logps_vjp(z, labels, mask, up, o, rlpo::write_to<float>(grad))
                    .value;
        else if (what == What::Forward)
            v = rlpo::logits::token_logps(z, labels, mask, o).logp(0, 0);
        else
            v = rlpo::logits::token_logps_backward(z, labels, mask, fwd, up,
                                                   rlpo::write_to<float>(grad))
                    .value;
        benchmark::DoNotOptimize(v);
    });
}

}  // namespace

#define RLPO_BENCH_TLP(NAME, WHAT)                                        \
    static void NAME(benchmark::State& s) { bench_token_logps(s, WHAT); } \
    BENCHMARK(NAME)                                                       \
        ->Args({2048, 32768})                                             \
        ->Args({256, 151936})                                             \
        ->UseRealTime()                                                   \
        ->Unit(benchmark::kMillisecond)

RLPO_BENCH_TLP(BM_token_logps_vjp, What::Vjp);
RLPO_BENCH_TLP(BM_token_logps_forward, What::Forward);
RLPO_BENCH_TLP(BM_token_logps_backward, What::Backward);
