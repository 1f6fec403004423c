#pragma once
/// \file
/// The one threading layer (internal): every parallel loop of the library goes through these
/// functions, and they run on rlpo's own pool of threads (core/detail/pool.hpp), so another
/// backend (TBB, a trainer's own pool) would replace these two files alone.
///
/// The contract every caller keeps: a loop body writes per-row (per-index) results only, and the
/// caller combines them in index order afterwards, so results are bitwise identical for any
/// number of threads and any schedule. Without threads (`RLPO_USE_OPENMP` undefined, the
/// switch that also gives rlpo its default thread count) every function runs its loop
/// serially, in index order.
///
///   * `parallel_for(n, parallel, f)`: f(i) for i in [0, n), in blocks of consecutive
///     indices (about an eighth of a thread's share) taken by whichever thread is free, so
///     that a thread the host deschedules delays only the block it holds;
///   * `parallel_for_dynamic(n, chunk, parallel, f)`: the same with blocks of `chunk` indices
///     (rows of uneven cost);
///   * `ordered_row_sums<K>(n, parallel, row)`: the contract packaged: `row(i, part)` fills
///     row i's K partial sums, the rows' sums are added in row order, and an exception thrown
///     by a row is captured and the first one in row order rethrown after the loop;
///   * `parallel_region(parallel, body)`: body(team) on the calling thread and on each pool
///     thread that joins the team, where `team.id()`, `team.size()`, `team.barrier()`,
///     `team.for_blocks(n, f)` and `team.for_dynamic(n, chunk, f)` (work sharing inside the
///     region: per-thread scratch is a local of `body`).
/// `parallel` false runs on the calling thread (small inputs: a team costs more than it saves).
///
/// **A team is whoever comes** (the reason this is not an OpenMP team). The calling thread is
/// member 0 and starts at once; pool threads join while the work lasts, each taking the next
/// id, up to `team.size()` = `team_size()` members. The call returns as soon as the work is
/// done and the members that joined have left: a pool thread the host has not scheduled by
/// then never joins and is not waited for (an OpenMP region ends with a barrier that waits for
/// every thread of the team, busy or not: 8–16 ms for a 1.3 ms call beside one busy process on
/// 2 cores). So a body may run on fewer than `team.size()` members, and must share its work
/// through `for_blocks` / `for_dynamic` or its own atomics, never by member id alone.
/// `barrier()` closes the team: the members that joined before the first barrier are the team
/// from then on, and every one of them must reach every barrier (a body that needs the whole
/// team, like the vocabulary kernels' row split, counts its members in before relying on
/// them). `for_blocks` / `for_dynamic` end without a barrier.
/// Every team has `team_size()` places: `rlpo::threads_per_call()` (core/threads.hpp), so a
/// caller's `ThreadLimit` and its own parallel regions (rlpo then runs serially) are obeyed
/// by every loop of the library.

#include <rlpo/core/detail/pool.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/threads.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <exception>
#include <type_traits>
#include <vector>

namespace rlpo::detail {

/// The places of the next team (`rlpo::threads_per_call()`: 1 inside the caller's parallel
/// region, inside an rlpo team, or without threads).
inline int team_size() noexcept { return ::rlpo::threads_per_call(); }

/// The threads of one `parallel_region`: this member's id and the team's places.
class Team {
public:
    Team(pool::Job* job, Index id, Index size) : job_(job), id_(id), size_(size) {}
    /// This member's id: 0 for the calling thread, then in the order the pool threads joined.
    Index id() const { return id_; }
    /// The team's places (`team_size()`); fewer members may have joined (see the file comment).
    Index size() const { return size_; }
    /// Every member of the team waits here for the others. The first barrier closes the team
    /// to further members.
    void barrier() const {
        if (job_) job_->barrier();
    }
    /// f(lo, hi) for blocks [lo, hi) of consecutive indices covering [0, n), shared by the
    /// members: about eight blocks a place, each taken by whichever member is free (a thread
    /// the host deschedules delays only its block). No barrier at the end.
    template <class F>
    void for_blocks(Index n, F&& f) const {
        const Index per = std::max<Index>(1, n / (8 * size_));
        const Index nb = (n + per - 1) / per;
        if (!job_) {
            for (Index b = 0; b < nb; ++b) f(b * per, std::min(n, (b + 1) * per));
            return;
        }
        std::atomic<Index>& next = job_->counter(construct_++);
        for (Index b = next.fetch_add(1, std::memory_order_relaxed); b < nb;
             b = next.fetch_add(1, std::memory_order_relaxed))
            f(b * per, std::min(n, (b + 1) * per));
    }
    /// f(i) for i in [0, n) shared by the members in blocks of `chunk` indices (no barrier).
    template <class F>
    void for_dynamic(Index n, int chunk, F&& f) const {
        const Index c = std::max<Index>(1, chunk);
        if (!job_) {
            for (Index i = 0; i < n; ++i) f(i);
            return;
        }
        std::atomic<Index>& next = job_->counter(construct_++);
        for (Index lo = next.fetch_add(c, std::memory_order_relaxed); lo < n;
             lo = next.fetch_add(c, std::memory_order_relaxed)) {
            const Index hi = std::min(n, lo + c);
            for (Index i = lo; i < hi; ++i) f(i);
        }
    }

private:
    pool::Job* job_;
    Index id_, size_;
    mutable int construct_ = 0;  // this member's next work-sharing construct
};

/// body(team) on the calling thread and on every pool thread that joins (one thread when
/// `parallel` is false or the team has one place). An exception leaving `body` on any member
/// is rethrown here after every member has left (the caller's own first); a body that uses
/// `barrier()` must not throw past it.
template <class F>
inline void parallel_region(bool parallel, F&& body) {
    const int nt = team_size();
    if (!parallel || nt <= 1) {
        const Team solo(nullptr, 0, 1);
        body(solo);
        return;
    }
#if defined(RLPO_USE_OPENMP)
    using Body = std::remove_reference_t<F>;
    struct Ctx {
        Body* body;
    } ctx{&body};
    pool::Job job(
        nt,
        [](void* c, pool::Job& j, int id) {
            const Team team(&j, id, j.places());
            (*static_cast<Ctx*>(c)->body)(team);
        },
        &ctx);
    pool::run(job);
#else
    const Team solo(nullptr, 0, 1);
    body(solo);
#endif
}

/// f(i) for i in [0, n), in blocks of consecutive indices handed out to free threads.
template <class F>
inline void parallel_for(Index n, bool parallel, F&& f) {
    const int nt = team_size();
    if (!parallel || nt <= 1 || n <= 1) {
        for (Index i = 0; i < n; ++i) f(i);
        return;
    }
    const Index per =
        std::max<Index>(1, std::min<Index>(n / (8 * static_cast<Index>(nt)), Index(1) << 20));
    parallel_region(true, [&](const Team& team) { team.for_dynamic(n, static_cast<int>(per), f); });
}

/// f(i) for i in [0, n), blocks of `chunk` indices handed out to free threads.
template <class F>
inline void parallel_for_dynamic(Index n, int chunk, bool parallel, F&& f) {
    const int nt = team_size();
    if (!parallel || nt <= 1 || n <= 1) {
        for (Index i = 0; i < n; ++i) f(i);
        return;
    }
    parallel_region(true, [&](const Team& team) { team.for_dynamic(n, chunk, f); });
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

/// The places a region would get at most (`team_size()`).
inline Index max_threads() { return team_size(); }

}  // namespace rlpo::detail
