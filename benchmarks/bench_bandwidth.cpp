// Memory bandwidth of this machine, STREAM-style: copy (a = b, 2 arrays moved) and triad
// (a = b + s·c, 3 arrays moved), float arrays of 256 MiB each (beyond any cache), in blocks
// handed out to rlpo's threads exactly as the library's loops hand out theirs (set
// OMP_NUM_THREADS), so that no other thread pool runs beside the kernels measured after it.
// The triad comes in two forms. With ordinary stores (STREAM's own loop) each line of `a` is
// read before it is written (write-allocate), so the memory moves 4 arrays while 3 are
// counted; with streaming (non-temporal) stores, as rlpo's kernels write an overwritten
// gradient, it moves the 3 that are counted. The streamed triad is therefore the upper bound
// for those kernels, and the ordinary one can be exceeded (by up to 4/3).
// bench_distill includes this file so that its roofline fractions divide by bandwidths
// measured in the same process, on the same machine, in the same run.
// RLPO_BENCH_HUGE_PAGES=1 puts the arrays (and the including benchmarks' large inputs and
// gradients) in transparent huge pages (`advise_huge_pages`).
#include <benchmark/benchmark.h>
#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/simd/packet.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rlpo_bw {

using Index = std::ptrdiff_t;

/// f(lo, hi) over [0, n) in blocks of 64 Ki elements, on rlpo's threads.
template <class F>
inline void blocks(Index n, F&& f) {
    constexpr Index kBlock = Index(1) << 16;
    rlpo::detail::parallel_for((n + kBlock - 1) / kBlock, true,
                               [&](Index b) { f(b * kBlock, std::min(n, (b + 1) * kBlock)); });
}

/// With RLPO_BENCH_HUGE_PAGES=1 in the environment (Linux): asks for transparent huge pages
/// (2 MiB) over the whole pages of [p, p + bytes), before the memory is first touched. The
/// kernel gives them where /sys/kernel/mm/transparent_hugepage/enabled is `madvise` or
/// `always`. Without the variable the arrays keep the system's default pages (4 KiB under
/// `madvise`, this project's measurements), as a trainer's tensors do unless its allocator
/// asks (PyTorch's does with THP_MEM_ALLOC_ENABLE=1). Returns whether it asked.
inline bool advise_huge_pages(void* p, std::size_t bytes) {
    static const bool on = [] {
        const char* e = std::getenv("RLPO_BENCH_HUGE_PAGES");
        return e && e[0] == '1';
    }();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (!on || !p) return false;
    const auto page = std::uintptr_t(4096);
    const auto lo = (reinterpret_cast<std::uintptr_t>(p) + page - 1) & ~(page - 1);
    const auto hi = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(page - 1);
    if (hi <= lo) return false;
    return madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) == 0;
#else
    static_cast<void>(p);
    static_cast<void>(bytes);
    return false;
#endif
}

/// `advise_huge_pages` over the storage of each matrix given (allocated, not yet touched).
template <class... M>
inline void advise_huge_pages_of(M&... m) {
    (advise_huge_pages(m.data(), sizeof(*m.data()) * static_cast<std::size_t>(m.size())), ...);
}

/// Frees what `aligned_floats` allocated.
struct FreeFloats {
    void operator()(float* p) const noexcept { std::free(p); }
};
using Floats = std::unique_ptr<float[], FreeFloats>;

/// n floats on a 64-byte boundary (the streaming stores of every packet size need its own).
inline Floats aligned_floats(Index n) {
    const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(float) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    advise_huge_pages(p, bytes);
    return Floats(static_cast<float*>(p));
}

/// Three arrays of n floats, first touched by the threads that will use them.
struct Arrays {
    Index n;
    Floats a, b, c;
    explicit Arrays(Index n_)
        : n(n_), a(aligned_floats(n_)), b(aligned_floats(n_)), c(aligned_floats(n_)) {
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

/// The triad with streaming stores to `a` (ordinary stores without SSE2, as
/// `simd::kStreamingStores`), as rlpo's kernels write an overwritten float gradient.
inline void triad_streamed(Arrays& x, float s) {
    float* __restrict a = x.a.get();
    const float* __restrict b = x.b.get();
    const float* __restrict c = x.c.get();
    blocks(x.n, [a, b, c, s](Index lo, Index hi) {
        Index i = lo;
#if defined(__SSE2__)
        namespace ei = Eigen::internal;
        using P = rlpo::detail::simd::Packet<float>;
        constexpr Index W = rlpo::detail::simd::width<float>;
        const P ps = ei::pset1<P>(s);
        for (; i + W <= hi; i += W)  // (blocks start at multiples of 64 Ki floats)
            rlpo::detail::simd::stream_packet(
                a + i, ei::pmadd(ps, ei::pload<P>(c + i), ei::pload<P>(b + i)));
        rlpo::detail::simd::store_fence();
#endif
        for (; i < hi; ++i) a[i] = b[i] + s * c[i];
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

/// One triad pass over `x`, the streamed one (`triad_streamed`) or the ordinary one.
inline void triad_pass(Arrays& x, bool streamed) {
    if (streamed)
        triad_streamed(x, 3.f);
    else
        triad(x, 3.f);
}

/// Seconds of one triad pass over `x` (`triad_pass`).
inline double timed_triad(Arrays& x, bool streamed = false) {
    const auto t0 = std::chrono::steady_clock::now();
    triad_pass(x, streamed);
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
/// timing) one triad pass and one streamed triad pass over `shared_arrays()`; the call's
/// `bytes` per second over each pass's bytes per second is one ratio of each kind. Sets the
/// counters `roofline` and `roofline_nt` (median ratios against the triad and the streamed
/// triad), `triad_GBps` and `triad_nt_GBps` (median bandwidths) and `median_ms` (median
/// call), and the bytes processed.
template <class F>
inline void paired_roofline(benchmark::State& state, double bytes, F&& call) {
    Arrays& x = shared_arrays();
    std::vector<double> ratio, ratio_nt, triad_bw, triad_nt_bw, times;
    for (auto _ : state) {
        state.PauseTiming();
        const double tt = timed_triad(x);
        const double tn = timed_triad(x, true);
        state.ResumeTiming();
        const auto t0 = std::chrono::steady_clock::now();
        call();
        benchmark::ClobberMemory();
        const double tk =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        times.push_back(tk);
        triad_bw.push_back(triad_bytes() / tt);
        triad_nt_bw.push_back(triad_bytes() / tn);
        ratio.push_back(bytes / tk / triad_bw.back());
        ratio_nt.push_back(bytes / tk / triad_nt_bw.back());
    }
    state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
    state.counters["roofline"] = median(ratio);
    state.counters["roofline_nt"] = median(ratio_nt);
    state.counters["triad_GBps"] = median(triad_bw) / 1e9;
    state.counters["triad_nt_GBps"] = median(triad_nt_bw) / 1e9;
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

// (state.range(0): 1 for the streamed triad)
static void BM_bandwidth_triad(benchmark::State& state) {
    rlpo_bw::Arrays x(rlpo_bw::kElems);
    for (auto _ : state) {
        rlpo_bw::triad_pass(x, state.range(0) == 1);
        benchmark::DoNotOptimize(x.a.get());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(state.iterations() * 3 * static_cast<int64_t>(sizeof(float)) *
                            rlpo_bw::kElems);
    state.SetLabel(state.range(0) == 1 ? "streamed" : "ordinary stores");
}
BENCHMARK(BM_bandwidth_triad)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);
