// TRRD (RLAD), four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/trrd.hpp>

using namespace policy_test;
using rlpo::policy::TRRDMixture;
using rlpo::policy::TRRDOptions;
namespace rp = rlpo::policy;

namespace {
std::vector<TRRDOptions> option_sets() {
    TRRDOptions arith;
    arith.mixture = TRRDMixture::Arithmetic;
    arith.old_weight = 0.3;
    TRRDOptions verl;
    verl.ppo = rp::PPOClipOptions::verl();
    verl.old_weight = 0.7;
    verl.teacher_log_ratio_clamp = 0.4;  // many tokens outside the band
    TRRDOptions unclamped;
    unclamped.teacher_log_ratio_clamp = std::numeric_limits<double>::infinity();
    TRRDOptions zero, one, arith_one;
    zero.old_weight = 0.0;
    one.old_weight = 1.0;
    arith_one = arith;
    arith_one.old_weight = 0.0;
    return {TRRDOptions{}, arith, verl, unclamped, zero, one, arith_one};
}
Mat<double> teacher_for(const Batch& b, std::uint64_t seed) {
    rt::Generator gen(seed);
    return gen.perturbed(b.logp, 0.7);
}
}  // namespace

TEST_CASE("trrd: gradient equals central finite differences", "[policy][trrd][fd]") {
    const Batch b = spread_batch(70, 8, 16, 0.15, false);
    const Mat<double> te = teacher_for(b, 71);
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            const auto r = rp::trrd(b.logp, b.old, te, b.adv, b.mask, o, n);
            const Mat<double> mix = rp::trrd_anchor(b.old, te, b.mask, o);
            const double c = o.teacher_log_ratio_clamp;
            const auto near_kink = [&](Index k) {
                // the ratio's clip points, and the teacher clamp's edges (geometric)
                const double d = b.logp.data()[k] - te.data()[k];
                const double q = std::exp(b.logp.data()[k] - mix.data()[k]);
                return std::abs(q - 0.8) < 1e-3 || std::abs(q - 1.2) < 1e-3 ||
                       std::abs(q - 3.0) < 1e-3 || std::abs(std::abs(d) - c) < 1e-4;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rp::trrd(x, b.old, te, b.adv, b.mask, o, n, rlpo::no_grad<double>())
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-9, near_kink);
        }
}

TEMPLATE_TEST_CASE("trrd: agrees with the PyTorch autograd reference", "[policy][trrd][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy", std::string("trrd_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, te, adv, mask;
        TRRDOptions o;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 2000;
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const Batch b = spread_batch(seed++, 8, 16, 0.15, false);
            Run r{b.logp.cast<S>(),    b.old.cast<S>(),  teacher_for(b, seed).cast<S>(),
                  b.adv.cast<S>(),     b.mask.cast<S>(), o,
                  norm_for(mode, seed)};
            r.mask(2, 3) = 0;
            r.te(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& c = ref.add<S>("trrd");
            c.in("logp", r.logp)
                .in("old_logp", r.old)
                .in("teacher_logp", r.te)
                .in("advantages", r.adv)
                .in("mask", r.mask);
            c.s("mixture", o.mixture == TRRDMixture::Geometric ? "geometric" : "arithmetic")
                .p("old_weight", o.old_weight)
                .p("teacher_log_ratio_clamp", o.teacher_log_ratio_clamp);
            c.p("clip_low", o.ppo.clip_low)
                .p("clip_high", o.ppo.clip_high)
                .p("log_ratio_clamp", o.ppo.log_ratio_clamp);
            if (o.ppo.dual_clip) c.p("dual_clip", *o.ppo.dual_clip);
            put_norm(c, r.n);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        const auto res = rp::trrd(r.logp, r.old, r.te, r.adv, r.mask, r.o, r.n);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        for (const char* name : {"ppo_kl", "trrd_anchor_shift", "trrd_teacher_clipfrac"})
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(k, name), 1e-12) < tol);
    }
}

TEST_CASE("trrd: properties", "[policy][trrd][properties]") {
    const Batch b = spread_batch(72, 8, 16, 0.15, false);
    const Mat<double> te = teacher_for(b, 73);
    SECTION("α = 1 is PPO clip against π_old; α = 0 unclamped is PPO clip against the teacher") {
        TRRDOptions o;
        o.old_weight = 1;
        const auto r1 = rp::trrd(b.logp, b.old, te, b.adv, b.mask, o);
        const auto p1 = rp::ppo_clip(b.logp, b.old, b.adv, b.mask, o.ppo);
        CHECK(r1.value == Approx(p1.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(r1.grad, p1.grad) < 1e-14);
        CHECK(r1.metrics["trrd_anchor_shift"] == 0.0);
        o.old_weight = 0;
        o.teacher_log_ratio_clamp = std::numeric_limits<double>::infinity();
        const auto r0 = rp::trrd(b.logp, b.old, te, b.adv, b.mask, o);
        const auto p0 = rp::ppo_clip(b.logp, te, b.adv, b.mask, o.ppo);
        CHECK(r0.value == Approx(p0.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(r0.grad, p0.grad) < 1e-14);
        CHECK(r0.metrics["trrd_teacher_clipfrac"] == 0.0);
    }
    SECTION("without the clamp, the geometric ratio is PPO clip against the anchor") {
        TRRDOptions o;
        o.teacher_log_ratio_clamp = std::numeric_limits<double>::infinity();
        const Mat<double> mix = rp::trrd_anchor(b.old, te, b.mask, o);
        const auto r = rp::trrd(b.logp, b.old, te, b.adv, b.mask, o);
        const auto p = rp::ppo_clip(b.logp, mix, b.adv, b.mask, o.ppo);
        CHECK(r.value == Approx(p.value).epsilon(1e-13));
        CHECK(rlpo_test::max_rel_err(r.grad, p.grad) < 1e-13);
    }
    SECTION("outside the teacher band only α of the gradient remains") {
        // one token, A < 0, logp − teacher = 2 > c = 1: r > 1 + ε, so the unclipped branch
        // −A·r is the max and its gradient flows, scaled by ∂z/∂logp = α
        Mat<double> lp(1, 1), old(1, 1), t(1, 1), A(1, 1);
        lp << -1.0;
        old << -1.05;
        t << -3.0;
        A << -1.0;
        const auto r = rp::trrd(lp, old, t, A, Mat<double>::Ones(1, 1));
        const double z = 0.5 * 0.05 + 0.5 * 1.0;  // α(lp − old) + (1 − α)·c
        REQUIRE(std::exp(z) > 1.2);
        CHECK(r.value == Approx(std::exp(z)).epsilon(1e-14));
        CHECK(r.grad(0, 0) == Approx(0.5 * std::exp(z)).epsilon(1e-14));
        CHECK(r.metrics["trrd_teacher_clipfrac"] == 1.0);
    }
    SECTION("AM-GM: the arithmetic anchor is ≥ the geometric one, equal when teacher = old") {
        TRRDOptions a, g;
        a.mixture = TRRDMixture::Arithmetic;
        const Mat<double> ma = rp::trrd_anchor(b.old, te, b.mask, a),
                          mg = rp::trrd_anchor(b.old, te, b.mask, g);
        CHECK(((ma - mg).array() >= -1e-15).all());
        const Mat<double> same = rp::trrd_anchor(b.old, b.old, b.mask, a);
        CHECK(rlpo_test::max_rel_err(
                  same, Mat<double>(b.old.array() * (b.mask.array() != 0).cast<double>())) < 1e-15);
    }
    SECTION("a −inf teacher log-prob leaves log(α)+old_logp in the arithmetic anchor") {
        Mat<double> old = Mat<double>::Constant(1, 1, -1.0),
                    t = Mat<double>::Constant(1, 1, -std::numeric_limits<double>::infinity());
        TRRDOptions a;
        a.mixture = TRRDMixture::Arithmetic;
        const Mat<double> mix = rp::trrd_anchor(old, t, Mat<double>::Ones(1, 1), a);
        CHECK(mix(0, 0) == Approx(std::log(0.5) - 1.0));
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rp::trrd(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                te.middleRows(r0, nr), b.adv.middleRows(r0, nr),
                                b.mask.middleRows(r0, nr), TRRDOptions{}, n);
            },
            b.mask);
    }
}

TEST_CASE("trrd: bad input gives the documented error", "[policy][trrd][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rp::trrd(x, x, y, x, m),
        "policy::trrd(): teacher_logp: expected shape [2, 3] (same as old_logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::trrd(x, y, x, x, m),
                                    "policy::trrd(): old_logp: expected shape");
    TRRDOptions o;
    o.old_weight = 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::trrd(x, x, x, x, m, o), "old_weight: must be in [0, 1]");
    o = {};
    o.teacher_log_ratio_clamp = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::trrd(x, x, x, x, m, o),
                                    "teacher_log_ratio_clamp: must be > 0, given 0");
    o.teacher_log_ratio_clamp = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::trrd(x, x, x, x, m, o), "teacher_log_ratio_clamp");
    o = {};
    o.ppo.clip_low = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::trrd(x, x, x, x, m, o), "clip_low: must be > 0");
    Mat<double> bad = x;
    bad(0, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::trrd(x, x, bad, x, m), "teacher_logp: NaN at [0, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::trrd(bad, x, x, x, m), "logp: NaN at [0, 2]");
}
