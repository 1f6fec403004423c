#pragma once
/// \file
/// rlpo's thread pool (internal; used through core/detail/parallel.hpp only).
///
/// One process-wide set of worker threads, started on first use and grown to what the calls
/// running at once ask for (the sum over them of their team's places − 1), never shrunk. A
/// call (`run(job)`) posts its job, runs member 0 on the calling thread at once, and returns
/// when its own part is done and the members that joined have left; a worker joins a posted
/// job only while the job is open (until the caller is done with it, the first barrier, or all
/// places are taken). So a call never waits for a worker the host has not scheduled: that
/// worker never joins. The job lives on the caller's stack; a worker touches it only between
/// joining and leaving, both under the pool's mutex, and the caller waits for every one that
/// joined.
///
/// Workers spin about 50 µs for the next job (back-to-back calls of a training step find them
/// awake), then sleep on a condition variable. A child process made by `fork` starts a fresh
/// pool (the parent's workers do not exist there). Exceptions leaving a member are captured
/// and rethrown on the caller, its own first.

#include <rlpo/core/threads.hpp>
#include <rlpo/core/types.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace rlpo::detail::pool {

/// A spin-wait pause.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#else
    std::this_thread::yield();
#endif
}

/// For tests: the most pool threads that may join the jobs this thread posts (−1: as many as
/// the places allow). 0 makes every team the caller alone with `size()` places, as on a host
/// that schedules none of the workers in time.
inline int& join_cap() noexcept {
    static thread_local int cap = -1;
    return cap;
}

class Pool;

/// One parallel call: its body, its places and the state its members share.
class Job {
public:
    using Run = void (*)(void* ctx, Job& job, int id);
    Job(int places, Run run, void* ctx) : run_(run), ctx_(ctx), places_(places), cap_(join_cap()) {
        for (auto& c : counters_) c.store(0, std::memory_order_relaxed);
    }
    Job(const Job&) = delete;
    Job& operator=(const Job&) = delete;
    Job(Job&&) = delete;
    Job& operator=(Job&&) = delete;
    ~Job() = default;

    int places() const { return places_; }
    /// The shared counter of the k-th work-sharing construct of the body.
    std::atomic<Index>& counter(int k) {
        if (k < 0 || k >= kCounters)
            throw std::logic_error(
                "rlpo: more work-sharing constructs in one region than the pool "
                "provides");
        return counters_[k];
    }
    /// Closes the team (at the first call) and waits for every member.
    void barrier();

private:
    friend class Pool;
    static constexpr int kCounters = 16;
    Run run_;
    void* ctx_;
    Pool* pool_ = nullptr;      // the pool it was posted to
    unsigned long serial_ = 0;  // its number among the pool's jobs (a worker joins a job once)
    int places_;
    int cap_;
    // under the pool's mutex
    int joined_ = 1;  // members so far, the caller included
    bool open_ = true;
    Job* next_ = nullptr;
    std::exception_ptr error_;
    // members that have left (the caller not counted); written under the mutex
    std::atomic<int> left_{0};
    // the barrier: the members once closed (0 before), arrivals, generation
    std::atomic<int> members_{0};
    std::atomic<int> arrived_{0};
    std::atomic<unsigned> generation_{0};
    std::atomic<Index> counters_[kCounters];
};

class Pool {
public:
    /// Runs `job` on the calling thread (member 0) and the workers that join; returns when all
    /// have left, rethrowing a member's exception.
    void run(Job& job) {
        const int want = job.places_ - 1;
        job.pool_ = this;
        bool wake = false;
        {
            const std::lock_guard<std::mutex> lock(mu_);
            demand_ += want;
            while (threads_ < demand_ && threads_ < kMaxThreads) {
                try {
                    std::thread([this] { work(); }).detach();
                } catch (const std::system_error&) {
                    break;  // no more threads: the call runs with the members it gets
                }
                ++threads_;
            }
            if (tail_)
                tail_->next_ = &job;
            else
                head_ = &job;
            tail_ = &job;
            ++posted_;
            job.serial_ = posted_;
            posted_seen_.store(posted_, std::memory_order_release);
            wake = sleeping_ > 0;
        }
        if (wake) work_cv_.notify_all();  // (after the unlock: the woken take the mutex next)
        std::exception_ptr own;
        {
            // (the caller runs a team member: its own calls in the body run serially)
            const ScopedValue<bool> mark(in_rlpo_team(), true);
            try {
                job.run_(job.ctx_, job, 0);
            } catch (...) {
                own = std::current_exception();
            }
        }
        int need = 0;
        {
            const std::lock_guard<std::mutex> lock(mu_);
            close_locked(job);
            demand_ -= want;
            need = job.joined_ - 1;
        }
        if (job.left_.load(std::memory_order_acquire) < need) {
            const auto t0 = std::chrono::steady_clock::now();
            for (int i = 1; job.left_.load(std::memory_order_acquire) < need; ++i) {
                if ((i & 63) == 0 && std::chrono::steady_clock::now() - t0 > kCallerSpin) break;
                cpu_relax();
            }
            std::unique_lock<std::mutex> lock(mu_);
            done_cv_.wait(lock, [&] { return job.left_.load(std::memory_order_acquire) >= need; });
        }
        if (own) std::rethrow_exception(own);
        if (job.error_) std::rethrow_exception(job.error_);
    }

    /// Closes `job`'s team (first call only): no member joins after it.
    void close(Job& job) {
        const std::lock_guard<std::mutex> lock(mu_);
        close_locked(job);
    }

private:
    static constexpr int kMaxThreads = 1024;
    static constexpr std::chrono::microseconds kWorkerSpin{50}, kCallerSpin{20};

    void close_locked(Job& job) {
        if (!job.open_) return;
        job.open_ = false;
        Job* prev = nullptr;
        for (Job* j = head_; j; prev = j, j = j->next_) {
            if (j != &job) continue;
            (prev ? prev->next_ : head_) = j->next_;
            if (tail_ == j) tail_ = prev;
            break;
        }
        job.next_ = nullptr;
        job.members_.store(job.joined_, std::memory_order_release);
    }

    /// The oldest open job with a free place that this worker has not joined before (the
    /// last it joined is `last`), joined under the mutex, and the id taken.
    Job* join_locked(unsigned long& last, int& id) {
        for (Job* j = head_; j; j = j->next_) {
            if (j->serial_ == last || (j->cap_ >= 0 && j->joined_ - 1 >= j->cap_)) continue;
            last = j->serial_;
            id = j->joined_++;
            if (j->joined_ == j->places_) close_locked(*j);
            return j;
        }
        return nullptr;
    }

    void work() {
        in_rlpo_team() = true;  // a worker's own calls (inside a body) run serially
        std::unique_lock<std::mutex> lock(mu_);
        unsigned long last = 0;
        for (;;) {
            int id = 0;
            if (Job* job = join_locked(last, id)) {
                lock.unlock();
                std::exception_ptr err;
                try {
                    job->run_(job->ctx_, *job, id);
                } catch (...) {
                    err = std::current_exception();
                }
                lock.lock();
                if (err && !job->error_) job->error_ = err;
                const bool closed = !job->open_;
                const int others = job->joined_ - 1;
                // the last access to the job: a caller that sees `left_` complete returns (it
                // may be spinning, without the mutex)
                const int left = job->left_.fetch_add(1, std::memory_order_acq_rel) + 1;
                if (closed && left == others) done_cv_.notify_all();
                continue;
            }
            const unsigned long seen = posted_;
            lock.unlock();
            const auto t0 = std::chrono::steady_clock::now();
            for (int i = 1; posted_seen_.load(std::memory_order_acquire) == seen; ++i) {
                if ((i & 63) == 0 && std::chrono::steady_clock::now() - t0 > kWorkerSpin) break;
                cpu_relax();
            }
            lock.lock();
            if (posted_ != seen) continue;
            ++sleeping_;
            work_cv_.wait(lock, [&] { return posted_ != seen; });
            --sleeping_;
        }
    }

    std::mutex mu_;
    std::condition_variable work_cv_, done_cv_;
    Job *head_ = nullptr, *tail_ = nullptr;  // the open jobs, oldest first
    unsigned long posted_ = 0;
    std::atomic<unsigned long> posted_seen_{0};  // `posted_`, for the workers' spin
    int threads_ = 0, demand_ = 0, sleeping_ = 0;
};

/// The process's pool (a new one in a child made by `fork`; pools are never destroyed, so
/// that no worker outlives its pool at exit).
inline Pool& instance() {
    static std::atomic<Pool*> slot{nullptr};
#if defined(__unix__) || defined(__APPLE__)
    static const int registered =
        pthread_atfork(nullptr, nullptr, [] { slot.store(nullptr, std::memory_order_relaxed); });
    static_cast<void>(registered);
#endif
    Pool* p = slot.load(std::memory_order_acquire);
    if (p) return *p;
    Pool* fresh =
        new Pool;  // NOLINT(cppcoreguidelines-owning-memory): lives as long as the process
    if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // NOLINT(cppcoreguidelines-owning-memory)
    return *p;
}

inline void Job::barrier() {
    if (members_.load(std::memory_order_acquire) == 0) pool_->close(*this);
    const int m = members_.load(std::memory_order_acquire);
    if (m <= 1) return;
    const unsigned gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == m) {
        arrived_.store(0, std::memory_order_relaxed);
        generation_.fetch_add(1, std::memory_order_release);
        return;
    }
    for (int i = 0; generation_.load(std::memory_order_acquire) == gen; ++i) {
        if (i < 4096)
            cpu_relax();
        else
            std::this_thread::yield();
    }
}

/// Runs `job` on the process's pool.
inline void run(Job& job) { instance().run(job); }

}  // namespace rlpo::detail::pool
