// ACE advantage modulation: PyTorch reference, closed forms, effect on the surrogate's
// gradient (finite differences through the modulated advantages), bad input.
#include "policy/policy_support.hpp"

#include <rlpo/policy/ace.hpp>
#include <rlpo/policy/reinforce.hpp>

using namespace policy_test;
using rlpo::policy::ACEOptions;
namespace rp = rlpo::policy;

TEMPLATE_TEST_CASE("ace_advantages: agrees with the PyTorch reference", "[policy][ace][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy", std::string("ace_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> adv, logp, refl, mask;
        ACEOptions o;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 1900;
    for (double alpha : {0.0, 0.5, 1.0, 3.0}) {
        const Batch b = spread_batch(seed++, 8, 16, 0.15, false, true);
        rt::Generator gen(seed);
        const Mat<double> refl = gen.perturbed(b.logp, 0.3);
        Run r{b.adv.cast<S>(), b.logp.cast<S>(), refl.cast<S>(), b.mask.cast<S>(),
              ACEOptions{alpha}};
        r.mask(2, 3) = 0;
        r.refl(2, 3) = std::numeric_limits<S>::quiet_NaN();
        auto& c = ref.add<S>("ace_advantages");
        c.in("advantages", r.adv)
            .in("logp", r.logp)
            .in("ref_logp", r.refl)
            .in("mask", r.mask)
            .p("alpha", alpha);
        runs.push_back(std::move(r));
    }
    ref.run();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        const auto res = rp::ace_advantages(r.adv, r.logp, r.refl, r.mask, r.o);
        CHECK(rlpo_test::max_rel_err(res.advantages, ref.out(k, "advantages")) <
              rlpo_test::ref_tol<S>());
        for (const char* name : {"ace_scale_mean", "ace_confidence_mean"})
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(k, name), 1e-12) <
                  rlpo_test::ref_tol<S>());
    }
}

TEST_CASE("ace_advantages: properties", "[policy][ace][properties]") {
    const Batch b = spread_batch(60, 8, 16, 0.15, false, true);
    SECTION(
        "α = 0 and non-negative advantages are unchanged; negative ones only grow in magnitude") {
        rt::Generator gen(61);
        const Mat<double> refl = gen.perturbed(b.logp, 0.5);
        const auto zero = rp::ace_advantages(b.adv, b.logp, refl, b.mask, ACEOptions{0.0});
        CHECK(zero.advantages == Mat<double>(b.adv.array() * (b.mask.array() != 0).cast<double>()));
        const auto r = rp::ace_advantages(b.adv, b.logp, refl, b.mask, ACEOptions{1.0});
        for (Index k = 0; k < b.adv.size(); ++k) {
            if (b.mask.data()[k] == 0) continue;
            const double a = b.adv.data()[k], m = r.advantages.data()[k];
            if (a >= 0)
                CHECK(m == a);
            else
                CHECK(m < a);
        }
    }
    SECTION(
        "closed form: c = Σ log-ratio; over-confident errors are penalised more than exploratory "
        "ones") {
        Mat<double> a = Mat<double>::Constant(2, 2, -1.0), lp(2, 2), refl = Mat<double>::Zero(2, 2);
        lp << 1.0, 2.0, -1.0, -2.0;  // row 0: c = 3 (reinforced error), row 1: c = −3
        const auto r = rp::ace_advantages(a, lp, refl, Mat<double>::Ones(2, 2), ACEOptions{0.5});
        CHECK(r.advantages(0, 0) == Approx(-(1 + 0.5 * std::log1p(std::exp(3.0)))));
        CHECK(r.advantages(1, 1) == Approx(-(1 + 0.5 * std::log1p(std::exp(-3.0)))));
        CHECK(r.advantages(0, 0) < r.advantages(1, 0));
    }
    SECTION(
        "used in a surrogate: the gradient is the surrogate's with the modulated advantages (FD)") {
        rt::Generator gen(62);
        const Mat<double> refl = gen.perturbed(b.logp, 0.5);
        const auto mod = rp::ace_advantages(b.adv, b.logp, refl, b.mask);
        const auto r = rp::reinforce(b.logp, mod.advantages, b.mask);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                return rp::reinforce(x, mod.advantages, b.mask, {}, rlpo::no_grad<double>()).value;
            },
            b.logp, r.grad, 1e-6, 1e-10);
    }
}

TEST_CASE("ace_advantages: bad input gives the documented error", "[policy][ace][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rp::ace_advantages(x, y, x, m),
        "policy::ace_advantages(): logp: expected shape [2, 3] (same as advantages), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::ace_advantages(x, x, x, m, ACEOptions{-1.0}),
                                    "alpha: must be >= 0");
    Mat<double> bad = x;
    bad(1, 0) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::ace_advantages(x, x, bad, m), "ref_logp: NaN at [1, 0]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::ace_advantages(x, ninf, ninf, m),
                                    "undefined (NaN) sequence log-ratio");
    CHECK(rp::ace_advantages(x, x, x, Mat<double>::Zero(2, 3)).advantages.isZero());
}
