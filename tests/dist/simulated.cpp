// Data-parallel functions on simulated ranks (threads of one process, tests/dist/
// simulated_reductions.hpp): every batch-level function with the reductions equals one call on
// the whole batch (tests/dist/scenarios.hpp), for 1 to 4 ranks; a group split across ranks is
// rejected on every rank; the reductions' own semantics (rank order, gather sizes); the local
// default is the identity. No MPI needed: the same scenarios run under mpirun in tests/mpi/.
#include "support/catch.hpp"

#include "dist/scenarios.hpp"
#include "dist/simulated_reductions.hpp"

#include <rlpo/dist/dist.hpp>

#include <string>
#include <vector>

using dist_test::on_ranks;
using dist_test::Report;

TEST_CASE("dist: every batch-level function equals one call on the whole batch") {
    for (int P : {1, 2, 3, 4}) {
        CAPTURE(P);
        const auto reports = on_ranks<Report>(
            P, [](const rlpo::dist::Reductions& red) { return dist_test::run_all(red); });
        for (const auto& rep : reports) {
            CHECK(rep.checks > 200);
            for (const auto& f : rep.failures) FAIL_CHECK(f);
        }
    }
}

TEST_CASE("dist: a group split across ranks is rejected on every rank") {
    for (int P : {2, 4}) {
        CAPTURE(P);
        const auto msgs = on_ranks<std::string>(P, [](const rlpo::dist::Reductions& red) {
            return dist_test::straddling_message(red);
        });
        for (const auto& m : msgs) {
            CAPTURE(m);
            CHECK(m.find("rlpo::dist::grpo_advantages()") != std::string::npos);
            CHECK(m.find("has responses on rank 0 and on rank 1") != std::string::npos);
            CHECK(m.find("each rank must hold whole groups") != std::string::npos);
        }
    }
}

TEST_CASE("dist: the reductions' semantics") {
    const auto out = on_ranks<std::vector<double>>(3, [](const rlpo::dist::Reductions& red) {
        const double r = red.rank();
        std::vector<double> v{r + 1, -r};
        red.sum(v.data(), v.size());
        const double mx = red.max(r * 2), mn = red.min(r - 5);
        const auto g = red.gather(std::vector<double>(static_cast<std::size_t>(red.rank()), r));
        std::vector<double> res{v[0], v[1], mx, mn, static_cast<double>(g.size())};
        for (const auto& p : g) res.push_back(static_cast<double>(p.size()));
        return res;
    });
    for (const auto& o : out) CHECK(o == std::vector<double>{6, -3, 4, -5, 3, 0, 1, 2});
    // the local default: the identity
    const auto& loc = rlpo::dist::local();
    CHECK(loc.size() == 1);
    CHECK(loc.rank() == 0);
    CHECK(loc.sum(2.5) == 2.5);
    CHECK(loc.gather({1, 2}) == std::vector<std::vector<double>>{{1, 2}});
}

TEST_CASE("dist: metrics merge across ranks with different name sets") {
    const auto out = on_ranks<rlpo::Metrics>(3, [](const rlpo::dist::Reductions& red) {
        rlpo::Metrics m;
        if (red.rank() != 1) m.add("a", red.rank() + 1.0, 2.0);
        m.add("b", 1.0, red.rank() == 2 ? 0.0 : 1.0);
        m.set("coef", 0.25);
        rlpo::Metrics plain;  // a plain metric merged from two micro-batches: (sum 2r, count 2)
        plain.set("p", red.rank());
        rlpo::Metrics second;
        second.set("p", red.rank());
        m.merge(plain.merge(second));
        return rlpo::dist::reduce_metrics(m, red);
    });
    for (const auto& m : out) {
        CHECK(m.at("a").sum == 4.0);
        CHECK(m.at("a").count == 4.0);
        CHECK(m["b"] == 1.5);
        CHECK(m["coef"] == 0.25);
        CHECK(m.at("coef").count == 1.0);
        CHECK(m.at("coef").plain);
        CHECK(m["p"] == 1.0);  // (0 + 0 + 1 + 1 + 2 + 2) / 6
        CHECK(m.at("p").plain);
    }
}
