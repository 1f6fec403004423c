// CISPO (verl clip form and TRL ε_max cap), four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/cispo.hpp>

using namespace policy_test;
using rlpo::policy::CISPOBound;
using rlpo::policy::CISPOOptions;

namespace {
std::vector<CISPOOptions> option_sets() {
    CISPOOptions narrow;  // lower bound off (ε_l ≥ 1), as the MiniMax-M1 paper runs it
    narrow.clip_low = 1.5;
    narrow.clip_high = 0.28;
    narrow.log_ratio_clamp = 2.0;  // clamp region on ordinary ratios
    return {CISPOOptions::verl(), CISPOOptions::trl(), CISPOOptions::trl(2.0), narrow};
}
}  // namespace

TEST_CASE("cispo: gradient equals central finite differences", "[policy][cispo][fd]") {
    const Batch b = spread_batch(12);
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::TokenMean) w.emplace(b.w);
            const auto r = rlpo::policy::cispo(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            const auto near_kink = [&](Index k) {  // the IS weight is piecewise in logp
                const double lr = b.logp.data()[k] - b.old.data()[k], q = std::exp(lr);
                return std::abs(q - (1 - o.clip_low)) < 1e-4 ||
                       std::abs(q - (1 + o.clip_high)) < 1e-4 || std::abs(q - o.cap) < 1e-4 ||
                       std::abs(std::abs(lr) - o.log_ratio_clamp) < 1e-4;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    // the detached IS weight is held at its value at b.logp: differentiate l(x) with
                    // w_is frozen, i.e. evaluate with old_logp shifted along with x.
                    const Mat<double> old_shift = b.old + (x - b.logp);
                    return rlpo::policy::cispo(x, old_shift, b.adv, b.mask, o, n,
                                               rlpo::no_grad<double>(), w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-8, near_kink);
        }
}

TEMPLATE_TEST_CASE("cispo: agrees with the PyTorch autograd reference", "[policy][cispo][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy", std::string("cispo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, adv, mask, w;
        CISPOOptions o;
        rlpo::Normalizer norm;
        bool weighted;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 600;
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const Batch b = spread_batch(seed++);
            Run r{b.logp.cast<S>(),     b.old.cast<S>(), b.adv.cast<S>(),
                  b.mask.cast<S>(),     b.w.cast<S>(),   o,
                  norm_for(mode, seed), seed % 2 == 0};
            r.mask(2, 3) = 0;
            r.old(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& c = ref.add<S>("cispo");
            c.in("logp", r.logp).in("old_logp", r.old).in("advantages", r.adv).in("mask", r.mask);
            if (r.weighted) c.in("is_weights", r.w);
            c.s("bound", o.bound == CISPOBound::Clip ? "clip" : "cap");
            c.p("clip_low", o.clip_low).p("clip_high", o.clip_high).p("cap", o.cap);
            c.p("log_ratio_clamp", o.log_ratio_clamp);
            put_norm(c, r.norm);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        rlpo::policy::TokenWeights<S> w;
        if (r.weighted) w.emplace(r.w);
        const auto res = rlpo::policy::cispo(r.logp, r.old, r.adv, r.mask, r.o, r.norm, {}, w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        for (const char* name : {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"}) {
            INFO(name);
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(k, name), 1e-12) < tol);
        }
        if (r.o.bound == CISPOBound::Cap)
            CHECK(rlpo_test::rel_err(res.metrics["cispo_clip_ratio"],
                                     ref.scalar(k, "cispo_clip_ratio"), 1e-12) < tol);
    }
}

TEST_CASE("cispo: properties", "[policy][cispo][properties]") {
    SECTION("ratio = 1: gradient −A/N (every token keeps its gradient), value −mean A·logp") {
        const Batch b = spread_batch(5);
        const auto r = rlpo::policy::cispo(b.logp, b.logp, b.adv, b.mask);
        const double N = b.mask.sum();
        CHECK(rlpo_test::max_rel_err(r.grad, Mat<double>(-(b.adv.array() * b.mask.array()) / N)) <
              1e-14);
        CHECK(r.value ==
              Approx(-(b.adv.array() * b.mask.array() * b.logp.array()).sum() / N).epsilon(1e-13));
        CHECK(r.metrics["pg_clipfrac"] == 0.0);
    }
    SECTION("clip form: the IS weight is clip(r); capped tokens keep a gradient, unlike PPO") {
        Mat<double> lp(1, 3), old = Mat<double>::Zero(1, 3), a = Mat<double>::Ones(1, 3),
                              m = Mat<double>::Ones(1, 3);
        lp << std::log(2.0), std::log(0.5), std::log(1.1);
        old = lp.array() - Eigen::Array<double, 1, 3>(std::log(2.0), std::log(0.5), std::log(1.1));
        old.setZero();
        lp << std::log(2.0) - 3.0, std::log(0.5) - 3.0, std::log(1.1) - 3.0;
        old << -3.0, -3.0, -3.0;
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rlpo::policy::cispo(lp, old, a, m, CISPOOptions::verl(), n);
        CHECK(r.grad(0, 0) == Approx(-1.2));
        CHECK(r.grad(0, 1) == Approx(-0.8));
        CHECK(r.grad(0, 2) == Approx(-1.1));
        CHECK(r.metrics["pg_clipfrac"] == Approx(2.0 / 3));
        const auto t =
            rlpo::policy::cispo(lp, old, a, m, CISPOOptions::trl(1.5), n);  // min(r, 1.5)
        CHECK(t.grad(0, 0) == Approx(-1.5));
        CHECK(t.grad(0, 1) == Approx(-0.5));
        CHECK(t.grad(0, 2) == Approx(-1.1));
        CHECK(t.metrics["cispo_clip_ratio"] == Approx(1.0 / 3));
    }
    SECTION("log-ratio clamp ±20: the IS weight is bounded, never inf") {
        Mat<double> lp(1, 2), old(1, 2), a = Mat<double>::Ones(1, 2), m = Mat<double>::Ones(1, 2);
        lp << -1.0, -40.0;
        old << -30.0, -1.0;
        const auto r = rlpo::policy::cispo(lp, old, a, m, CISPOOptions::trl(1e15));  // cap far away
        CHECK(r.grad(0, 0) == Approx(-std::exp(29.0) / 2).epsilon(1e-12));  // TRL: no clamp
        CHECK(r.grad(0, 1) == Approx(-std::exp(-39.0) / 2).epsilon(1e-12));
        CISPOOptions o = CISPOOptions::trl(1e15);
        o.log_ratio_clamp = 20.0;
        const auto c = rlpo::policy::cispo(lp, old, a, m, o);
        CHECK(c.grad(0, 0) == Approx(-std::exp(20.0) / 2).epsilon(1e-12));
        CHECK(c.grad(0, 1) == Approx(-std::exp(-20.0) / 2).epsilon(1e-12));
        CHECK(c.metrics["ppo_kl"] == Approx(0.0).margin(1e-12));
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Batch b = spread_batch(6);
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::cispo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                           b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                           CISPOOptions::verl(), n);
            },
            b.mask);
    }
}

TEST_CASE("cispo: bad input gives the documented error", "[policy][cispo][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::cispo(x, y, x, m),
        "policy::cispo(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(x, x, y, m), "advantages: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(x, x, x, y), "mask: expected shape");
    CISPOOptions o;
    o.clip_low = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(x, x, x, m, o), "clip_low: must be > 0");
    o = {};
    o.clip_high = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(x, x, x, m, o), "clip_high: must be > 0");
    o = CISPOOptions::trl(0.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(x, x, x, m, o), "cap: must be > 0");
    o = {};
    o.log_ratio_clamp = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(x, x, x, m, o),
                                    "log_ratio_clamp: must be > 0");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(x, bad, x, m), "old_logp: NaN at [1, 2]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(ninf, ninf, m, m),
                                    "non-finite loss or gradient");
    {  // logp = {−inf, −inf}, A = {1, −1}: l = ±inf per token (the sum used to be NaN)
        Mat<double> lp(1, 2), old = Mat<double>::Zero(1, 2), a(1, 2), m2 = Mat<double>::Ones(1, 2);
        lp << -std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity();
        a << 1, -1;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::cispo(lp, old, a, m2),
                                        "inputs at [0, 0] give a non-finite loss or gradient");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            rlpo::policy::cispo(lp, old, a, m2, {}, {}, rlpo::no_grad<double>()),
            "inputs at [0, 0] give a non-finite loss or gradient");
    }
    const auto empty = rlpo::policy::cispo(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.metrics["pg_clipfrac"] == 0.0);
}
