#pragma once
/// \file
/// How many threads an rlpo call uses, and how a caller limits them.
///
/// Every parallel loop of the library goes through one layer (core/detail/parallel.hpp), which
/// runs it on rlpo's own pool of threads (core/detail/pool.hpp) and asks `threads_per_call()`
/// for the places of each team. The calling thread always works; pool threads join while there
/// is work, and the call returns when the work is done and the threads that joined have left:
/// it never waits for a pool thread the host has not scheduled (an OpenMP region's end would).
///
///   * **Default:** OpenMP's setting for the calling thread (`OMP_NUM_THREADS`,
///     `omp_set_num_threads`), i.e. `omp_get_max_threads()`.
///   * **`ThreadLimit`:** `rlpo::ThreadLimit limit(4);` makes every rlpo call that this thread
///     makes while `limit` lives run on teams of 4 threads, fewer or more than OpenMP's
///     setting (small inputs still run serially; the innermost of nested limits wins; other
///     threads are not affected). `ThreadLimit(1)` runs the calls serially on the
///     calling thread. Nothing global changes: OpenMP's own setting stays as it was.
///   * **Inside the caller's own parallel region** (an active OpenMP team, e.g. a trainer that
///     evaluates micro-batches in `#pragma omp parallel for`), and inside rlpo's own teams:
///     every call runs serially on its calling thread, whatever the limit — rlpo never starts
///     a nested team, so the machine is not oversubscribed.
///   * **Several threads at once** (e.g. `std::thread` workers, each calling rlpo): each call
///     gets a team of `threads_per_call()` places, and the pool grows to what the calls
///     running at once ask for, so W workers use up to W times as many threads; give each
///     worker a `ThreadLimit` of (cores / W) to stay within the machine.
///   * **`fork`:** a child process starts a pool of its own on its first parallel call.
///
/// Results do not depend on the number of threads, nor on how many of the pool's threads join
/// a call: every reduction is combined in row order (bitwise identical for 1, 2, … threads;
/// docs/contract.md). Without OpenMP (`RLPO_USE_OPENMP` undefined, the switch that also gives
/// the default above) every call is serial and `threads_per_call()` is 1.

#include <rlpo/core/error.hpp>

#if defined(RLPO_USE_OPENMP)
#include <omp.h>
#endif

namespace rlpo {

namespace detail {
/// The calling thread's limit (0: none). One per thread, so limits of different threads never
/// meet.
inline int& thread_limit_slot() noexcept {
    static thread_local int limit = 0;
    return limit;
}
/// Whether this thread is running a member of an rlpo team (a call made there runs serially).
inline bool& in_rlpo_team() noexcept {
    static thread_local bool inside = false;
    return inside;
}
/// For a scope: a per-thread setting (`slot`) holds `value`, and gets its previous value back
/// at the end (RAII; create and destroy it on the same thread). `ThreadLimit`, a team
/// member's mark (`in_rlpo_team`) and the tests' cap on joining threads are all this.
template <class T>
class ScopedValue {
public:
    ScopedValue(T& slot, T value) : slot_(slot), previous_(slot) { slot_ = value; }
    ~ScopedValue() { slot_ = previous_; }
    ScopedValue(const ScopedValue&) = delete;
    ScopedValue& operator=(const ScopedValue&) = delete;
    ScopedValue(ScopedValue&&) = delete;
    ScopedValue& operator=(ScopedValue&&) = delete;

private:
    T& slot_;
    T previous_;
};
}  // namespace detail

/// The number of threads an rlpo call made now, from this thread, would use at most: 1 inside
/// an active OpenMP parallel region of the caller or an rlpo team (or without OpenMP), else the
/// innermost `ThreadLimit` of this thread, else `omp_get_max_threads()`.
inline int threads_per_call() noexcept {
#if defined(RLPO_USE_OPENMP)
    if (detail::in_rlpo_team() || omp_in_parallel()) return 1;
    const int limit = detail::thread_limit_slot();
    return limit > 0 ? limit : omp_get_max_threads();
#else
    return 1;
#endif
}

/// Limits the threads of the rlpo calls the constructing thread makes while the object lives
/// (RAII; restores the previous limit on destruction). `threads` ≥ 1; 0 means no limit
/// (OpenMP's setting), e.g. to lift an outer limit for one block. Create and destroy it on
/// the same thread.
class ThreadLimit {
public:
    explicit ThreadLimit(int threads) : scope_(detail::thread_limit_slot(), checked(threads)) {}

private:
    static int checked(int threads) {
        RLPO_CHECK(threads >= 0, "ThreadLimit", "threads: must be ≥ 0 (0: no limit), given ",
                   threads);
        return threads;
    }
    detail::ScopedValue<int> scope_;  // (not copyable, not movable)
};

}  // namespace rlpo
