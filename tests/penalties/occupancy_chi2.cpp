// ORPO χ² / √χ² occupancy penalty (reward side): closed forms, torch reference, properties, bad input.
// (No gradient: the result is a reward term, so the finite-difference check does not apply.)
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/penalties/occupancy_chi2.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::penalties::OccupancyChi2Options;
using rlpo::penalties::OccupancyDivergence;
namespace rt = rlpo::testing;

TEMPLATE_TEST_CASE("occupancy_chi2_penalty: agrees with the PyTorch reference",
                   "[penalties][orpo][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("penalties", std::string("orpo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> d, mask;
        OccupancyChi2Options o;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 900;
    for (auto div : {OccupancyDivergence::ChiSquared, OccupancyDivergence::SqrtChiSquared})
        for (Index T : {5, 40})  // 40·8 > 100 samples: trimming active
            for (double clip : {std::numeric_limits<double>::infinity(), 0.5}) {
                rt::Generator gen(seed++);
                Run r;
                r.d = gen.normal<S>(8, T, 0.8);
                r.d(0, 0) = S(3.5);  // an outlier the trim drops
                r.mask = gen.mask<S>(8, T, 1, true);
                r.mask(0, 0) = 1;
                r.mask(1, 1) = 0;
                r.d(1, 1) = std::numeric_limits<S>::quiet_NaN();  // masked garbage
                r.o.divergence = div;
                r.o.coef = 0.3 + 0.1 * static_cast<double>(seed % 3);
                r.o.reward_clip = clip;
                auto& c = tr.add<S>("occupancy_chi2_penalty");
                c.in("log_ratio", r.d).in("mask", r.mask);
                c.p("coef", r.o.coef).p("trim", r.o.trim).p("reward_clip", clip);
                c.s("divergence", div == OccupancyDivergence::ChiSquared ? "chi2" : "sqrt_chi2");
                runs.push_back(std::move(r));
            }
    tr.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i);
        const auto& r = runs[i];
        const auto res = rlpo::penalties::occupancy_chi2_penalty(r.d, r.mask, r.o);
        CHECK(rlpo_test::max_rel_err(res.rewards, tr.out(i, "rewards")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["occupancy_measure_chi2"],
                                 tr.scalar(i, "occupancy_measure_chi2")) < tol);
        if (r.o.divergence == OccupancyDivergence::SqrtChiSquared)
            CHECK(rlpo_test::rel_err(res.chi2_trimmed,
                                     tr.scalar(i, "occupancy_measure_chi2_trimmed")) < tol);
    }
}

TEST_CASE("occupancy_chi2_penalty: properties", "[penalties][orpo][properties]") {
    SECTION("closed form: plain χ² reward is −λ(e^d − 1); √χ² divides by sqrt of the mean") {
        Mat<double> d(1, 3), m = Mat<double>::Ones(1, 3);
        d << 0.0, std::log(2.0), std::log(4.0);  // e^d − 1 = 0, 1, 3
        OccupancyChi2Options o;
        o.divergence = OccupancyDivergence::ChiSquared;
        o.coef = 0.5;
        const auto plain = rlpo::penalties::occupancy_chi2_penalty(d, m, o);
        CHECK(plain.rewards(0, 0) == 0.0);
        CHECK(plain.rewards(0, 1) == Approx(-0.5));
        CHECK(plain.rewards(0, 2) == Approx(-1.5));
        CHECK(plain.metrics["occupancy_measure_chi2"] == Approx(4.0 / 3));
        o.divergence = OccupancyDivergence::SqrtChiSquared;
        const auto sq = rlpo::penalties::occupancy_chi2_penalty(d, m, o);
        // 3 samples: ⌊0.03⌋ = 0 trimmed (ORPO's slice would be empty here: see the header)
        CHECK(sq.chi2_trimmed == Approx(4.0 / 3));
        CHECK(sq.rewards(0, 2) == Approx(-0.5 * 3 / std::sqrt(4.0 / 3)));
    }
    SECTION("trimming drops the extremes; a non-positive trimmed mean leaves the χ² rewards") {
        const Index n = 200;
        Mat<double> d = Mat<double>::Constant(1, n, std::log(1.5)), m = Mat<double>::Ones(1, n);
        d(0, 0) = 10.0;   // huge outlier
        d(0, 1) = -10.0;  // tiny outlier
        const auto r = rlpo::penalties::occupancy_chi2_penalty(d, m);
        CHECK(r.chi2_trimmed ==
              Approx(0.5).epsilon(1e-12));  // the two outliers trimmed (⌊2⌋ = 2 each end)
        Mat<double> neg = Mat<double>::Constant(1, 4, -1.0);
        const auto rn = rlpo::penalties::occupancy_chi2_penalty(neg, Mat<double>::Ones(1, 4));
        CHECK(rn.chi2_trimmed < 0);
        CHECK(rn.rewards(0, 0) == Approx(-std::expm1(-1.0)));  // unnormalised
    }
    SECTION("masked tokens get 0 and are never read; an empty mask gives zeros") {
        Mat<double> d = Mat<double>::Ones(2, 2), m = Mat<double>::Ones(2, 2);
        m(1, 0) = 0;
        d(1, 0) = std::numeric_limits<double>::quiet_NaN();
        const auto r = rlpo::penalties::occupancy_chi2_penalty(d, m);
        CHECK(r.rewards(1, 0) == 0.0);
        const auto e = rlpo::penalties::occupancy_chi2_penalty(d, Mat<double>::Zero(2, 2));
        CHECK(e.rewards.isZero());
        CHECK(e.metrics["occupancy_measure_chi2"] == 0.0);
    }
}

TEST_CASE("occupancy_chi2_penalty: bad input gives the documented error",
          "[penalties][orpo][bad-input]") {
    const Mat<double> d = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::occupancy_chi2_penalty(d, Mat<double>::Ones(2, 2)),
        "penalties::occupancy_chi2_penalty(): mask: expected shape [2, 3]");
    OccupancyChi2Options o;
    o.coef = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::occupancy_chi2_penalty(d, m, o),
                                    "coef: must be >= 0");
    o = {};
    o.trim = 0.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::occupancy_chi2_penalty(d, m, o),
                                    "trim: must be in [0, 0.5)");
    o = {};
    o.reward_clip = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::occupancy_chi2_penalty(d, m, o),
                                    "reward_clip: must be > 0");
    Mat<double> bad = d;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::occupancy_chi2_penalty(bad, m),
                                    "log_ratio: NaN at [1, 2]");
}
