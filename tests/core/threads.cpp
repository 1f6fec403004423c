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
#include <thread>
#include <vector>

#if defined(RLPO_USE_OPENMP)
#include <omp.h>
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

/// The size of the team that ran a library loop of 64 indices now (forced parallel; which of
/// its threads take the blocks is up to the schedule).
int loop_threads() {
    std::vector<int> team(64, -1);
    rlpo::detail::parallel_for(64, true, [&](Index i) {
#if defined(RLPO_USE_OPENMP)
        team[static_cast<std::size_t>(i)] = omp_get_num_threads();
#else
        team[static_cast<std::size_t>(i)] = 1;
#endif
    });
    int most = 0;
    for (int w : team) most = std::max(most, w);
    return most;
}

rlpo::Result<double> a_divergence() {
    rt::Generator gen(17);
    const Mat<double> z = gen.logits(48, 3000), y = gen.logits(48, 3000);
    return rlpo::distill::divergence(
        z, y, rlpo::distill::DistillOptions::make(rlpo::distill::Divergence::JSD));
}

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
        CHECK(loop_threads() == 3);
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
    // the schedule, every index runs exactly once, and for_blocks' blocks are consecutive,
    // non-empty and tile [0, n) (counted per index; sizes below, at and above the team's).
    for (const int nt : {1, 2, 3}) {
        const rlpo::ThreadLimit limit(nt);
        for (const Index n : {Index(0), Index(1), Index(2), Index(7), Index(64), Index(1001)}) {
            INFO(nt << " threads, n = " << n);
            std::vector<int> hits(static_cast<std::size_t>(n), 0);
            rlpo::detail::parallel_for(n, true, [&](Index i) {
#if defined(RLPO_USE_OPENMP)
#pragma omp atomic
#endif
                ++hits[static_cast<std::size_t>(i)];
            });
            CHECK(std::count(hits.begin(), hits.end(), 1) == n);
            std::vector<int> covered(static_cast<std::size_t>(n), 0);
            int bad_blocks = 0;
            rlpo::detail::parallel_region(true, [&](const rlpo::detail::Team& team) {
                team.for_blocks(n, [&](Index lo, Index hi) {
                    if (!(0 <= lo && lo < hi && hi <= n)) {
#if defined(RLPO_USE_OPENMP)
#pragma omp atomic
#endif
                        ++bad_blocks;
                        return;
                    }
                    for (Index i = lo; i < hi; ++i) {
#if defined(RLPO_USE_OPENMP)
#pragma omp atomic
#endif
                        ++covered[static_cast<std::size_t>(i)];
                    }
                });
            });
            CHECK(bad_blocks == 0);
            CHECK(std::count(covered.begin(), covered.end(), 1) == n);
        }
    }
}
