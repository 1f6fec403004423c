// Memory bandwidth of this machine, STREAM-style: copy (a = b, 2 arrays moved) and triad
// (a = b + s·c, 3 arrays moved), float arrays of 256 MiB each (beyond any cache), in blocks
// handed out to rlpo's threads exactly as the library's loops hand out theirs (set
// OMP_NUM_THREADS), so that no other thread pool runs beside the kernels measured after it.
// bench_distill includes this file so that its roofline fraction divides by a bandwidth
// measured in the same process, on the same machine, in the same run.
#include <benchmark/benchmark.h>
#include <rlpo/core/detail/parallel.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <vector>

namespace rlpo_bw {

using Index = std::ptrdiff_t;

/// f(lo, hi) over [0, n) in blocks of 64 Ki elements, on rlpo's threads.
template <class F>
inline void blocks(Index n, F&& f) {
    constexpr Index kBlock = Index(1) << 16;
    rlpo::detail::parallel_for((n + kBlock - 1) / kBlock, true,
                               [&](Index b) { f(b * kBlock, std::min(n, (b + 1) * kBlock)); });
}

/// Three arrays of n floats, first touched by the threads that will use them.
struct Arrays {
    Index n;
    std::unique_ptr<float[]> a, b, c;
    explicit Arrays(Index n_)
        : n(n_),
          a(new float[static_cast<std::size_t>(n_)]),
          b(new float[static_cast<std::size_t>(n_)]),
          c(new float[static_cast<std::size_t>(n_)]) {
        float* pa = a.get();
        float* pb = b.get();
        float* pc = c.get();
        blocks(n, [&](Index lo, Index hi) {
            for (Index i = lo; i < hi; ++i) {
                pa[i] = 0.f;
                pb[i] = 1.f;
                pc[i] = 2.f;
            }
        });
    }
};

inline void copy(Arrays& x) {
    float* __restrict a = x.a.get();
    const float* __restrict b = x.b.get();
    blocks(x.n, [a, b](Index lo, Index hi) {
        float* __restrict pa = a;
        const float* __restrict pb = b;
        for (Index i = lo; i < hi; ++i) pa[i] = pb[i];
    });
}

inline void triad(Arrays& x, float s) {
    float* __restrict a = x.a.get();
    const float* __restrict b = x.b.get();
    const float* __restrict c = x.c.get();
    blocks(x.n, [a, b, c, s](Index lo, Index hi) {
        float* __restrict pa = a;
        const float* __restrict pb = b;
        const float* __restrict pc = c;
        for (Index i = lo; i < hi; ++i) pa[i] = pb[i] + s * pc[i];
    });
}

constexpr Index kElems = Index(64) << 20;  // 64 Mi floats = 256 MiB per array

/// Best-of-`reps` triad bandwidth in bytes/s (STREAM reports the best rep), measured once per
/// process and cached.
inline double triad_bytes_per_second(int reps = 7) {
    static const double bw = [reps] {
        Arrays x(kElems);
        double best = 1e300;
        for (int r = 0; r < reps; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            triad(x, 3.f);
            const auto t1 = std::chrono::steady_clock::now();
            best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
            benchmark::DoNotOptimize(x.a.get());
        }
        return 3.0 * sizeof(float) * static_cast<double>(kElems) / best;
    }();
    return bw;
}

/// Seconds of one triad pass over `x`.
inline double timed_triad(Arrays& x) {
    const auto t0 = std::chrono::steady_clock::now();
    triad(x, 3.f);
    const auto t1 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(x.a.get());
    benchmark::ClobberMemory();
    return std::chrono::duration<double>(t1 - t0).count();
}

/// Bytes one triad pass moves (read b and c, write a).
inline double triad_bytes() { return 3.0 * sizeof(float) * static_cast<double>(kElems); }

/// The arrays of the per-iteration triad passes of bench_distill, allocated once.
inline Arrays& shared_arrays() {
    static Arrays x(kElems);
    return x;
}

/// Median of v (0 for none).
inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

/// The benchmark loop of the roofline benchmarks: before each timed `call()` (outside the
/// timing) one triad pass over `shared_arrays()`; the call's `bytes` per second over that
/// pass's bytes per second is one ratio. Sets the counters `roofline` (median ratio),
/// `triad_GBps` (median triad bandwidth) and `median_ms` (median call), and the bytes processed.
template <class F>
inline void paired_roofline(benchmark::State& state, double bytes, F&& call) {
    Arrays& x = shared_arrays();
    std::vector<double> ratio, triad_bw, times;
    for (auto _ : state) {
        state.PauseTiming();
        const double tt = timed_triad(x);
        state.ResumeTiming();
        const auto t0 = std::chrono::steady_clock::now();
        call();
        benchmark::ClobberMemory();
        const double tk =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        times.push_back(tk);
        triad_bw.push_back(triad_bytes() / tt);
        ratio.push_back(bytes / tk / triad_bw.back());
    }
    state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
    state.counters["roofline"] = median(ratio);
    state.counters["triad_GBps"] = median(triad_bw) / 1e9;
    // the median call (the Time column is the mean, with a first call's page faults in it)
    state.counters["median_ms"] = median(times) * 1e3;
}

}  // namespace rlpo_bw

static void BM_bandwidth_copy(benchmark::State& state) {
    rlpo_bw::Arrays x(rlpo_bw::kElems);
    for (auto _ : state) {
        rlpo_bw::copy(x);
        benchmark::DoNotOptimize(x.a.get());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * 2 * static_cast<int64_t>(sizeof(float)) *
                            rlpo_bw::kElems);
}
BENCHMARK(BM_bandwidth_copy)->UseRealTime()->Unit(benchmark::kMillisecond);

static void BM_bandwidth_triad(benchmark::State& state) {
    rlpo_bw::Arrays x(rlpo_bw::kElems);
    for (auto _ : state) {
        rlpo_bw::triad(x, 3.f);
        benchmark::DoNotOptimize(x.a.get());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * 3 * static_cast<int64_t>(sizeof(float)) *
                            rlpo_bw::kElems);
}
BENCHMARK(BM_bandwidth_triad)->UseRealTime()->Unit(benchmark::kMillisecond);
