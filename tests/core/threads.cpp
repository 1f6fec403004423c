// Threads per call (core/threads.hpp): the default, ThreadLimit (nesting, per calling thread,
// bad input), serial calls inside the caller's own parallel region, and results that do not
// depend on any of it.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/threads.hpp>
#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(RLPO_USE_OPENMP)
#include <omp.h>
#endif
#if defined(__unix__)
#include <sys/wait.h>
#include <unistd.h>
#endif

using rlpo::Index;
using rlpo::Mat;
namespace rt = rlpo::testing;

namespace {

/// The size of the team a library region gets now (forced parallel).
int region_team_size() {
    int size = 0;
    rlpo::detail::parallel_region(true, [&](const rlpo::detail::Team& team) {
        if (team.id() == 0) size = static_cast<int>(team.size());
    });
    return size;
}

/// The number of threads that ran a library loop of 64 indices now (forced parallel): at most
/// the team's places, since a team is whoever of the pool comes in time.
int loop_threads() {
    std::vector<std::thread::id> who(64);
    rlpo::detail::parallel_for(
        64, true, [&](Index i) { who[static_cast<std::size_t>(i)] = std::this_thread::get_id(); });
    std::sort(who.begin(), who.end());
    return static_cast<int>(std::unique(who.begin(), who.end()) - who.begin());
}

rlpo::Result<double> a_divergence() {
    rt::Generator gen(17);
    const Mat<double> z = gen.logits(48, 3000), y = gen.logits(48, 3000);
    return rlpo::distill::divergence(
        z, y, rlpo::distill::DistillOptions::make(rlpo::distill::Divergence::JSD));
}

/// For the scope: at most `cap` pool threads join the teams this thread starts (−1: no cap).
using JoinCap = rlpo::detail::ScopedValue<int>;
int& join_cap() { return rlpo::detail::pool::join_cap(); }

}  // namespace

TEST_CASE("threads: ThreadLimit sets the team of every call of this thread, and nests",
          "[core][threads]") {
#if defined(RLPO_USE_OPENMP)
    const int omp_default = omp_get_max_threads();
    CHECK(rlpo::threads_per_call() == omp_default);
    CHECK(region_team_size() == omp_default);
    {
        const rlpo::ThreadLimit three(3);
        CHECK(rlpo::threads_per_call() == 3);
        CHECK(region_team_size() == 3);
        CHECK(loop_threads() <= 3);
        {
            const rlpo::ThreadLimit one(1);
            CHECK(rlpo::threads_per_call() == 1);
            CHECK(region_team_size() == 1);
            CHECK(loop_threads() == 1);
            {
                const rlpo::ThreadLimit none(0);  // lifts the outer limits for this block
                CHECK(rlpo::threads_per_call() == omp_default);
            }
            CHECK(rlpo::threads_per_call() == 1);
        }
        CHECK(rlpo::threads_per_call() == 3);
        // another thread is not limited by this one's ThreadLimit
        int other = 0;
        std::thread([&] { other = rlpo::threads_per_call(); }).join();
        CHECK(other == omp_default);
        CHECK(omp_get_max_threads() == omp_default);  // OpenMP's own setting is untouched
    }
    CHECK(rlpo::threads_per_call() == omp_default);
    CHECK(region_team_size() == omp_default);
#else
    CHECK(rlpo::threads_per_call() == 1);
    const rlpo::ThreadLimit three(3);
    CHECK(rlpo::threads_per_call() == 1);
    CHECK(region_team_size() == 1);
#endif
}

TEST_CASE("threads: a negative ThreadLimit is rejected", "[core][threads]") {
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::ThreadLimit(-1), "threads: must be");
    CHECK_THROWS_AS(rlpo::ThreadLimit(-2), rlpo::invalid_argument);
}

TEST_CASE("threads: calls inside the caller's parallel region run serially, same result",
          "[core][threads]") {
    const auto serial = [] {
        const rlpo::ThreadLimit one(1);
        return a_divergence();
    }();
    const auto whole = a_divergence();
    CHECK(whole.value == serial.value);  // bitwise, whatever the team
    CHECK(whole.grad == serial.grad);
#if defined(RLPO_USE_OPENMP)
    const int workers = 3;
    std::vector<int> per_call(workers, -1), team(workers, -1), same(workers, 0);
#pragma omp parallel num_threads(workers)
    {
        const int w = omp_get_thread_num();
        const rlpo::ThreadLimit four(4);  // ignored inside an active region: no nested team
        per_call[static_cast<std::size_t>(w)] = rlpo::threads_per_call();
        team[static_cast<std::size_t>(w)] = region_team_size();
        const auto r = a_divergence();
        same[static_cast<std::size_t>(w)] = r.value == serial.value && r.grad == serial.grad;
    }
    for (int w = 0; w < workers; ++w) {
        INFO("worker " << w);
        CHECK(per_call[static_cast<std::size_t>(w)] == 1);
        CHECK(team[static_cast<std::size_t>(w)] == 1);
        CHECK(same[static_cast<std::size_t>(w)] == 1);
    }
#endif
}

TEST_CASE("threads: several caller threads, each with its own limit, agree bitwise",
          "[core][threads]") {
    const auto reference = a_divergence();
    std::vector<int> seen(3, -1), same(3, 0);
    std::vector<std::thread> workers;
    for (int w = 0; w < 3; ++w)
        workers.emplace_back([&, w] {
            const rlpo::ThreadLimit limit(w + 1);
            seen[static_cast<std::size_t>(w)] = rlpo::threads_per_call();
            const auto r = a_divergence();
            same[static_cast<std::size_t>(w)] =
                r.value == reference.value && r.grad == reference.grad;
        });
    for (auto& t : workers) t.join();
    for (int w = 0; w < 3; ++w) {
        INFO("worker " << w);
#if defined(RLPO_USE_OPENMP)
        CHECK(seen[static_cast<std::size_t>(w)] == w + 1);
#endif
        CHECK(same[static_cast<std::size_t>(w)] == 1);
    }
}

TEST_CASE("threads: the library's loops cover every index once, in blocks of consecutive ones",
          "[core][threads]") {
    // parallel_for and Team::for_blocks hand out blocks to whichever thread is free: whatever
    // the schedule and however many pool threads join, every index runs exactly once, and
    // for_blocks' blocks are consecutive, non-empty and tile [0, n) (counted per index; sizes
    // below, at and above the team's; with every member, one pool thread at most, none).
    for (const int cap : {-1, 1, 0}) {
        for (const int nt : {1, 2, 3}) {
            const rlpo::ThreadLimit limit(nt);
            const JoinCap join(join_cap(), cap);
            for (const Index n : {Index(0), Index(1), Index(2), Index(7), Index(64), Index(1001)}) {
                INFO(nt << " threads, at most " << cap << " joining, n = " << n);
                std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
                rlpo::detail::parallel_for(
                    n, true, [&](Index i) { hits[static_cast<std::size_t>(i)].fetch_add(1); });
                CHECK(std::count(hits.begin(), hits.end(), 1) == n);
                std::vector<std::atomic<int>> covered(static_cast<std::size_t>(n));
                std::atomic<int> bad_blocks{0};
                rlpo::detail::parallel_region(true, [&](const rlpo::detail::Team& team) {
                    team.for_blocks(n, [&](Index lo, Index hi) {
                        if (!(0 <= lo && lo < hi && hi <= n)) {
                            bad_blocks.fetch_add(1);
                            return;
                        }
                        for (Index i = lo; i < hi; ++i)
                            covered[static_cast<std::size_t>(i)].fetch_add(1);
                    });
                });
                CHECK(bad_blocks.load() == 0);
                CHECK(std::count(covered.begin(), covered.end(), 1) == n);
            }
        }
    }
}

TEST_CASE("threads: a team is whoever comes; the caller never waits for a missing thread",
          "[core][threads]") {
    // No pool thread may join (as when the host schedules none of them in time): the team
    // keeps its places, its members are the caller alone, and every result is the same bits
    // (a row split of the vocabulary kernels falls back to row blocks after its check-in).
    rt::Generator gen(5);
    const Mat<float> z = gen.logits(6, 200000).cast<float>(),
                     y = gen.logits(6, 200000).cast<float>();
    const auto long_rows = [&] {
        return rlpo::distill::divergence(
            z, y, rlpo::distill::DistillOptions::make(rlpo::distill::Divergence::JSD));
    };
    const auto serial = [&] {
        const rlpo::ThreadLimit one(1);
        return std::make_pair(a_divergence(), long_rows());
    }();
    for (const int cap : {0, 1, -1}) {
        INFO("at most " << cap << " joining");
        const rlpo::ThreadLimit three(3);
        const JoinCap join(join_cap(), cap);
        std::atomic<int> members{0}, places{0}, bad_ids{0};
        rlpo::detail::parallel_region(true, [&](const rlpo::detail::Team& team) {
            members.fetch_add(1);
            if (team.id() == 0) places = static_cast<int>(team.size());
            if (team.id() >= team.size()) bad_ids.fetch_add(1);
        });
        CHECK(bad_ids.load() == 0);
#if defined(RLPO_USE_OPENMP)
        CHECK(places.load() == 3);
#endif
        if (cap == 0) CHECK(members.load() == 1);
        if (cap == 1) CHECK(members.load() <= 2);
        const auto a = a_divergence();
        CHECK(a.value == serial.first.value);
        CHECK(a.grad == serial.first.grad);
        const auto b = long_rows();
        CHECK(b.value == serial.second.value);
        CHECK(b.grad == serial.second.grad);
    }
}

TEST_CASE("threads: a barrier holds every member that joined before it", "[core][threads]") {
    // two phases: each index of `b` reads two neighbours of `a` written by any member in the
    // first phase; without the barrier (or with a member let through early) some read a 0
    const Index n = 4096;
    for (const int cap : {-1, 1, 0}) {
        const rlpo::ThreadLimit three(3);
        const JoinCap join(join_cap(), cap);
        for (int rep = 0; rep < 20; ++rep) {
            std::vector<int> a(static_cast<std::size_t>(n), 0), b(a);
            rlpo::detail::parallel_region(true, [&](const rlpo::detail::Team& team) {
                team.for_blocks(n, [&](Index lo, Index hi) {
                    // the first block is late, as if its thread had been descheduled
                    if (lo == 0) std::this_thread::sleep_for(std::chrono::microseconds(500));
                    for (Index i = lo; i < hi; ++i) a[static_cast<std::size_t>(i)] = 1;
                });
                team.barrier();
                team.for_blocks(n, [&](Index lo, Index hi) {
                    for (Index i = lo; i < hi; ++i)
                        b[static_cast<std::size_t>(i)] =
                            a[static_cast<std::size_t>((i + 1) % n)] +
                            a[static_cast<std::size_t>((i + n - 1) % n)];
                });
                team.barrier();
            });
            INFO("at most " << cap << " joining, repetition " << rep);
            REQUIRE(std::count(b.begin(), b.end(), 2) == n);
        }
    }
}

TEST_CASE("threads: an exception on any member reaches the caller", "[core][threads]") {
    const rlpo::ThreadLimit three(3);
    // whichever thread runs index 500 throws; the loop's other members finish first
    CHECK_THROWS_WITH(rlpo::detail::parallel_for(1000, true,
                                                 [](Index i) {
                                                     if (i == 500)
                                                         throw std::runtime_error("row 500");
                                                 }),
                      "row 500");
    // every member throws: the caller's own error is the one rethrown
    CHECK_THROWS_WITH(rlpo::detail::parallel_region(true,
                                                    [](const rlpo::detail::Team& team) {
                                                        throw std::runtime_error(
                                                            "member " + std::to_string(team.id()));
                                                    }),
                      "member 0");
    // and the pool still works
    CHECK(region_team_size() == 3);
}

TEST_CASE("threads: many short calls from several threads at once", "[core][threads]") {
    // callers share the pool's threads: every call covers its indices once, none waits forever
    std::vector<int> ok(4, 0);
    std::vector<std::thread> callers;
    for (int w = 0; w < 4; ++w)
        callers.emplace_back([&, w] {
            const rlpo::ThreadLimit limit(1 + w % 3);
            int good = 0;
            for (int rep = 0; rep < 300; ++rep) {
                std::vector<std::atomic<int>> hits(257);
                rlpo::detail::parallel_for(
                    257, true, [&](Index i) { hits[static_cast<std::size_t>(i)].fetch_add(1); });
                good += std::count(hits.begin(), hits.end(), 1) == 257;
            }
            ok[static_cast<std::size_t>(w)] = good;
        });
    for (auto& t : callers) t.join();
    for (int w = 0; w < 4; ++w) CHECK(ok[static_cast<std::size_t>(w)] == 300);
}

#if defined(__unix__)
TEST_CASE("threads: a child made by fork computes with a fresh pool", "[core][threads]") {
    const auto before = a_divergence();  // the parent's pool has started
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // the child: the parent's workers do not exist here
        const rlpo::ThreadLimit two(2);
        const auto r = a_divergence();
        _exit(r.value == before.value && r.grad == before.grad ? 0 : 1);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}
#endif

TEST_CASE("threads: after a row split gave way, the next calls start in row blocks",
          "[core][threads]") {
    // No pool thread may join: the long-row split's check-in fails and the call gives way
    // (one fallback). Within split_backoff_seconds the next call does not try again (no
    // second check-in, no second fallback); with the back-off off it does. Same bits always.
    rt::Generator gen(9);
    const Mat<float> z = gen.logits(4, 200000).cast<float>(),
                     y = gen.logits(4, 200000).cast<float>();
    auto o = rlpo::distill::DistillOptions::make(rlpo::distill::Divergence::ForwardKL);
    const auto serial = [&] {
        const rlpo::ThreadLimit one(1);
        return rlpo::distill::divergence(z, y, o);
    }();
    rlpo::distill::FastPathStats stats;
    o.stats = &stats;
    o.tuning.split_backoff_seconds = 3600.0;
    const rlpo::ThreadLimit two(2);
    const JoinCap none(join_cap(), 0);
    for (int call = 0; call < 3; ++call) {
        const auto r = rlpo::distill::divergence(z, y, o);
        CHECK(r.value == serial.value);
        CHECK(r.grad == serial.grad);
    }
    CHECK(stats.split_fallbacks.load() <= 1);  // (0 when an earlier call of the process gave way)
    o.tuning.split_backoff_seconds = 0.0;
    const std::size_t before = stats.split_fallbacks.load();
    const auto r = rlpo::distill::divergence(z, y, o);
#if defined(RLPO_USE_OPENMP)
    CHECK(stats.split_fallbacks.load() == before + 1);
#else
    CHECK(stats.split_fallbacks.load() == before);  // one thread: no split to give way
#endif
    CHECK(r.grad == serial.grad);
}
