// Reward shaping rules: PyTorch reference, closed forms / properties, bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include "rollout/common.hpp"

#include <rlpo/rollout/shaping.hpp>

#include <cmath>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
using rlpo::rollout::Groups;
using rlpo::rollout::OverlongOptions;
namespace rr = rlpo::rollout;
namespace rt = rlpo::testing;
constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();

TEMPLATE_TEST_CASE("shaping rules agree with the PyTorch reference", "[rollout][shaping][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("rollout", std::string("shape_") + (sizeof(S) == 4 ? "f" : "d"));
    std::vector<std::function<void(std::size_t)>> checks;
    const double tol = rlpo_test::ref_tol<S>();
    rt::Generator gen(900);
    // DAPO overlong penalty: lengths across all three zones and the boundaries
    for (const auto& o : {OverlongOptions::dapo(100, 20), OverlongOptions::verl(100, 20, 0.5),
                          OverlongOptions::dapo(64, 64)}) {
        Vec<S> L(12);
        for (Index k = 0; k < 10; ++k) L(k) = static_cast<S>(std::floor(gen.uniform(0, o.max_length * 1.2)));
        L(10) = static_cast<S>(o.max_length - o.cache_length);
        L(11) = static_cast<S>(o.max_length);
        auto& c = tr.add<S>("overlong");
        c.in("lengths", Mat<S>(L)).p("max_length", o.max_length).p("cache_length", o.cache_length);
        c.p("penalty_factor", o.penalty_factor).s("clip", o.clip_beyond_max ? "yes" : "no");
        checks.push_back([&tr, L, o, tol](std::size_t i) {
            const Vec<S> p = rr::overlong_penalty(L, o);
            CHECK(rlpo_test::max_rel_err(Mat<double>(p.template cast<double>()), tr.out(i, "penalty")) < tol);
        });
    }
    tr.run();
    for (std::size_t i = 0; i < checks.size(); ++i) {
        INFO("case " << i);
        checks[i](i);
    }
}

TEST_CASE("overlong penalty: closed form zones", "[rollout][shaping][properties]") {
    Vec<double> L(6);
    L << 0, 80, 90, 100, 101, 500;
    const Vec<double> p = rr::overlong_penalty(L, OverlongOptions::dapo(100, 20));
    CHECK(p(0) == 0.0);
    CHECK(p(1) == 0.0);
    CHECK(p(2) == Approx(-0.5));
    CHECK(p(3) == Approx(-1.0));
    CHECK(p(4) == -1.0);
    CHECK(p(5) == -1.0);
    const Vec<double> v = rr::overlong_penalty(L, OverlongOptions::verl(100, 20, 2.0));
    CHECK(v(2) == Approx(-1.0));
    CHECK(v(3) == Approx(-2.0));
    CHECK(v(4) == Approx(-2.1));  // verl continues the ramp (its lengths never exceed the cap)
    // monotone non-increasing in the length
    for (Index k = 1; k < 6; ++k) CHECK(p(k) <= p(k - 1));
}

TEST_CASE("shaping: bad input gives the documented error", "[rollout][shaping][bad-input]") {
    Vec<double> L(2);
    L << 10, 20;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::overlong_penalty(L, OverlongOptions{}), "rollout::overlong_penalty(): max_length: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::overlong_penalty(L, OverlongOptions::dapo(10, 20)),
                                    "cache_length: must be in (0, max_length = 10], given 20");
    auto o = OverlongOptions::dapo(100, 20);
    o.penalty_factor = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::overlong_penalty(L, o), "penalty_factor: must be >= 0");
    L(1) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::overlong_penalty(L, OverlongOptions::dapo(100, 20)),
                                    "lengths: entries must be finite and >= 0, given nan at response 1");
}
