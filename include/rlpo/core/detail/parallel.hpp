#pragma once
/// \file
/// The one threading layer (internal): every parallel loop of the library goes through these
/// functions, so OpenMP pragmas live in this header only, and another backend (TBB, a
/// trainer's own pool) would replace this file alone.
///
/// The contract every caller keeps: a loop body writes per-row (per-index) results only, and the
/// caller combines them in index order afterwards, so results are bitwise identical for any
/// number of threads. Without OpenMP (`RLPO_USE_OPENMP` undefined) every function runs its
/// loop serially, in index order.
///
///   * `parallel_for(n, parallel, f)`: f(i) for i in [0, n), in blocks of consecutive
///     indices (about an eighth of a thread's share) taken by whichever thread is free, so
///     that a thread the host deschedules delays only the block it holds (a static split
///     would make every call wait for its slowest thread's whole share);
///   * `parallel_for_dynamic(n, chunk, parallel, f)`: the same with a dynamic schedule of
///     `chunk` indices (rows of uneven cost);
///   * `ordered_row_sums<K>(n, parallel, row)`: the contract packaged: `row(i, part)` fills
///     row i's K partial sums, the rows' sums are added in row order, and an exception thrown
///     by a row is captured and the first one in row order rethrown after the loop;
///   * `parallel_region(parallel, body)`: body(team) on every thread of one team, where
///     `team.id()`, `team.size()`, `team.barrier()`, `team.for_blocks(n, f)` and
///     `team.for_dynamic(n, chunk, f)` (work sharing inside the region: per-thread scratch is
///     a local of `body`).
/// `parallel` false runs on the calling thread (small inputs: a team costs more than it saves).
/// Every team has `team_size()` threads: `rlpo::threads_per_call()` (core/threads.hpp), so a
/// caller's `ThreadLimit` and its own parallel regions (rlpo then runs serially) are obeyed
/// by every loop of the library.

#include <rlpo/core/error.hpp>
#include <rlpo/core/threads.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <exception>
#include <vector>

#if defined(RLPO_USE_OPENMP)
#include <omp.h>
#endif

namespace rlpo::detail {

/// The threads of the next team (`rlpo::threads_per_call()`: 1 inside the caller's parallel
/// region or without OpenMP).
inline int team_size() noexcept { return ::rlpo::threads_per_call(); }

/// f(i) for i in [0, n), in blocks of consecutive indices handed out to free threads.
template <class F>
inline void parallel_for(Index n, bool parallel, F&& f) {
#if defined(RLPO_USE_OPENMP)
    const int nt = team_size();
    const Index per = n / (8 * static_cast<Index>(nt));
    const int chunk = per > 1 ? static_cast<int>(std::min<Index>(per, 1 << 20)) : 1;
#pragma omp parallel for schedule(dynamic, chunk) if (parallel && nt > 1) num_threads(nt)
    for (Index i = 0; i < n; ++i) f(i);
#else
    static_cast<void>(parallel);
    for (Index i = 0; i < n; ++i) f(i);
#endif
}

/// f(i) for i in [0, n), dynamic schedule of `chunk` indices.
template <class F>
inline void parallel_for_dynamic(Index n, int chunk, bool parallel, F&& f) {
#if defined(RLPO_USE_OPENMP)
    const int nt = team_size();
#pragma omp parallel for schedule(dynamic, chunk) if (parallel && nt > 1) num_threads(nt)
    for (Index i = 0; i < n; ++i) f(i);
#else
    static_cast<void>(chunk);
    static_cast<void>(parallel);
    for (Index i = 0; i < n; ++i) f(i);
#endif
}

/// Σ over rows of K partial sums: `row(i, part)` fills `part` (std::array<double, K>, zeroed)
/// for row i ∈ [0, n), rows in parallel when `parallel`; the partials are added in row order,
/// so the sums are bitwise identical for any number of threads. An exception thrown by a row
/// is captured (never crosses threads) and the first one in row order is rethrown, except that
/// an `rlpo::invalid_argument` of any row outranks other errors of earlier rows (a bad input
/// is reported before an overflow it may have caused elsewhere).
template <std::size_t K, class F>
inline std::array<double, K> ordered_row_sums(Index n, bool parallel, F&& row) {
    std::vector<std::array<double, K>> part(static_cast<std::size_t>(n), std::array<double, K>{});
    std::vector<std::exception_ptr> err(static_cast<std::size_t>(n));
    parallel_for(n, parallel, [&](Index i) {
        const auto r = static_cast<std::size_t>(i);
        try {
            row(i, part[r]);
        } catch (...) {
            err[r] = std::current_exception();
        }
    });
    std::exception_ptr first;
    for (const auto& e : err) {
        if (!e) continue;
        if (!first) first = e;
        try {
            std::rethrow_exception(e);
        } catch (const ::rlpo::invalid_argument&) {
            first = e;
            break;
        } catch (...) {
        }
    }
    if (first) std::rethrow_exception(first);
    std::array<double, K> sum{};
    for (std::size_t r = 0; r < part.size(); ++r) {
        for (std::size_t j = 0; j < K; ++j) sum[j] += part[r][j];
    }
    return sum;
}

/// The threads of one `parallel_region`.
class Team {
public:
    Team(Index id, Index size) : id_(id), size_(size) {}
    Index id() const { return id_; }
    Index size() const { return size_; }
    /// Every thread of the team waits here for the others.
    void barrier() const {
#if defined(RLPO_USE_OPENMP)
        if (size_ > 1) {
#pragma omp barrier
        }
#endif
    }
    /// f(lo, hi) for blocks [lo, hi) of consecutive indices covering [0, n), shared by the
    /// team: about eight blocks a thread, each taken by whichever thread is free (a thread the
    /// host deschedules delays only its block); ends with a barrier.
    template <class F>
    void for_blocks(Index n, F&& f) const {
        const Index per = std::max<Index>(1, n / (8 * size_));
        const Index nb = (n + per - 1) / per;
#if defined(RLPO_USE_OPENMP)
#pragma omp for schedule(dynamic, 1)
        for (Index b = 0; b < nb; ++b) f(b * per, std::min(n, (b + 1) * per));
#else
        for (Index b = 0; b < nb; ++b) f(b * per, std::min(n, (b + 1) * per));
#endif
    }
    /// f(i) for i in [0, n) shared by the team, dynamic schedule (ends with a barrier).
    template <class F>
    void for_dynamic(Index n, int chunk, F&& f) const {
#if defined(RLPO_USE_OPENMP)
#pragma omp for schedule(dynamic, chunk)
        for (Index i = 0; i < n; ++i) f(i);
#else
        static_cast<void>(chunk);
        for (Index i = 0; i < n; ++i) f(i);
#endif
    }

private:
    Index id_, size_;
};

/// body(team) on every thread of one team (one thread when `parallel` is false).
template <class F>
inline void parallel_region(bool parallel, F&& body) {
#if defined(RLPO_USE_OPENMP)
    const int nt = team_size();
#pragma omp parallel if (parallel && nt > 1) num_threads(nt)
    {
        const Team team(omp_get_thread_num(), omp_get_num_threads());
        body(team);
    }
#else
    static_cast<void>(parallel);
    body(Team(0, 1));
#endif
}

/// The number of threads a region would get at most (`team_size()`).
inline Index max_threads() { return team_size(); }

}  // namespace rlpo::detail
