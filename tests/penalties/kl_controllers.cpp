// KL controllers: fixed, adaptive (PPO), DADS weights (APO), SAFE (differentiable), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/penalties/kl_controllers.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
using rlpo::penalties::SAFEKLController;
namespace rt = rlpo::testing;

namespace {
// Drive a controller through a history of (kl, entropy, reward) steps.
struct History {
    Mat<double> rows;  // [H, 3]
};
History make_history(std::uint64_t seed, Index H, double kl_level) {
    rt::Generator gen(seed);
    History h;
    h.rows.resize(H, 3);
    for (Index k = 0; k < H; ++k) {
        h.rows(k, 0) = kl_level * (1.0 + 0.5 * gen.uniform());
        h.rows(k, 1) = gen.uniform(0.5, 3.0);
        h.rows(k, 2) = 0.3 + 0.005 * static_cast<double>(k) + 0.05 * gen.normal();
    }
    return h;
}
SAFEKLController replay(const History& h) {
    SAFEKLController c;
    for (Index k = 0; k < h.rows.rows(); ++k) c.step(h.rows(k, 0), h.rows(k, 1), h.rows(k, 2));
    return c;
}
}  // namespace

TEST_CASE("SAFE penalty: gradient equals central finite differences",
          "[penalties][controllers][fd]") {
    rt::Generator gen(61);
    const Mat<double> logp = gen.logprobs(4, 9);
    const Mat<double> m = gen.mask(4, 9, 1, true);
    for (double shift : {0.5, 4.0, 12.0}) {  // below, near and above the threshold
        INFO("shift " << shift);
        const Mat<double> ref = logp.array() - shift;
        const SAFEKLController c = replay(make_history(7, 30, 1.0));
        const auto r = c.penalty(logp, ref, m, 1.3, 0.4);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                return c.penalty(x, ref, m, 1.3, 0.4, rlpo::no_grad<double>()).value;
            },
            logp, r.grad, 1e-6, 1e-10);
    }
}

TEMPLATE_TEST_CASE("SAFE penalty: agrees with the PyTorch autograd reference",
                   "[penalties][controllers][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("penalties", std::string("safe_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, ref, mask;
        History h;
        double entropy, reward;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 700;
    for (Index H : {0, 1, 20, 60, 130})
        for (double level : {0.05, 0.8, 3.0}) {
            rt::Generator gen(seed++);
            Run r;
            r.logp = gen.logprobs<S>(5, 8);
            r.ref = (r.logp.array() - static_cast<S>(level * gen.uniform(0.5, 1.5))).matrix();
            r.ref = r.ref + gen.normal<S>(5, 8, 0.1);
            r.mask = gen.mask<S>(5, 8, 1, true);
            r.mask(0, 0) = 0;
            r.logp(0, 0) = std::numeric_limits<S>::quiet_NaN();  // masked garbage
            r.h = make_history(seed, H, level);
            r.entropy = gen.uniform(0.0, 4.0);
            r.reward = 0.5 + 0.1 * gen.normal();
            auto& c = tr.add<S>("safe_penalty");
            c.in("logp", r.logp).in("ref_logp", r.ref).in("mask", r.mask);
            c.in("history", H > 0 ? r.h.rows : Mat<double>(0, 3));
            c.p("entropy", r.entropy).p("reward", r.reward);
            runs.push_back(std::move(r));
        }
    tr.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i);
        const auto& r = runs[i];
        const SAFEKLController c = replay(r.h);
        const auto res = c.penalty(r.logp, r.ref, r.mask, r.entropy, r.reward);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value"), 1e-12) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, tr.out(i, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["safe_threshold"], tr.scalar(i, "threshold")) < 1e-12);
        INFO("kl_short " << res.metrics["safe_kl_short"] << " vs " << tr.scalar(i, "kl_short"));
        CHECK(rlpo_test::rel_err(res.metrics["safe_kl_short"], tr.scalar(i, "kl_short")) < tol);
    }
}

TEST_CASE("KL controllers: properties", "[penalties][controllers][properties]") {
    SECTION("fixed never moves; adaptive follows its closed form") {
        rlpo::penalties::FixedKLController f(0.05);
        f.update(10.0, 1000);
        CHECK(f.value() == 0.05);
        rlpo::penalties::AdaptiveKLOptions o;
        o.init_beta = 0.1;
        rlpo::penalties::AdaptiveKLController a(o);
        a.update(0.1, 256);  // on target: unchanged
        CHECK(a.value() == Approx(0.1).epsilon(1e-15));
        a.update(0.15, 256);  // e = 0.5 → clipped to 0.2
        CHECK(a.value() == Approx(0.1 * (1 + 0.2 * 256 / 10000.0)).epsilon(1e-15));
        const double b = a.value();
        a.update(0.09, 1000);  // e = −0.1
        CHECK(a.value() == Approx(b * (1 - 0.1 * 1000 / 10000.0)).epsilon(1e-14));
        a.update(0.0, 10000);  // e = −1 → −0.2 over a full horizon
        CHECK(a.value() == Approx(b * 0.99 * 0.8).epsilon(1e-14));
    }
    SECTION("DADS weights: closed form, neutral cases, and applied through the mask") {
        Vec<double> adv(5), acc(5);
        adv << 1.0, 1.0, -1.0, 0.5, 0.7;
        acc << 0.25, 1.0, 0.25, 0.0, 0.75;
        const Vec<double> w = rlpo::penalties::dads_weights(adv, acc);
        CHECK(w(0) == Approx(1 - std::exp(-std::exp(1.0) * 0.25)));  // d = 0.75
        CHECK(w(1) == 1.0);                                          // d = 0: all correct
        CHECK(w(2) == 1.0);                                          // A ≤ 0
        CHECK(w(3) == 1.0);                                          // d = 1: none correct
        CHECK(w(4) == Approx(1 - std::exp(-std::exp(1.0) * 0.75)));
        CHECK(w(0) < w(4));  // harder prompt, smaller KL weight on its successes
        // weights scale each sequence's KL; denominators stay the unweighted counts
        rt::Generator gen(5);
        const Mat<double> lp = gen.logprobs(5, 6), ref = gen.perturbed(lp, 1.0),
                          m = Mat<double>::Ones(5, 6);
        const Mat<double> wm = m.array().colwise() * w.array();
        rlpo::Normalizer n;
        n.num_tokens = 30.0;
        const auto weighted =
            rlpo::penalties::kl_penalty(lp, ref, wm, rlpo::penalties::KLOptions::verl(), n);
        double expect = 0;
        for (Index i = 0; i < 5; ++i) {
            rlpo::Normalizer sum;
            sum.mode = Aggregation::TokenSum;
            expect += w(i) * rlpo::penalties::kl_penalty(
                                 Mat<double>(lp.row(i)), Mat<double>(ref.row(i)),
                                 Mat<double>(m.row(i)), rlpo::penalties::KLOptions::verl(), sum)
                                 .value;
        }
        CHECK(weighted.value == Approx(expect / 30.0).epsilon(1e-13));
    }
    SECTION(
        "SAFE: penalty() equals what step() returns, leaves the state alone; gate and threshold") {
        rt::Generator gen(9);
        const Mat<double> lp = gen.logprobs(3, 5), m = Mat<double>::Ones(3, 5);
        const Mat<double> ref = lp.array() - 8.0;  // batch KL = 8
        SAFEKLController c = replay(make_history(3, 70, 2.0));
        const double ks_before = c.kl_short();
        const auto p = c.penalty(lp, ref, m, 0.4, 0.6);
        CHECK(c.kl_short() == ks_before);
        SAFEKLController copy = c;
        const auto st = copy.step(8.0, 0.4, 0.6);
        CHECK(st.active);
        CHECK(p.value == Approx(st.penalty).epsilon(1e-13));
        CHECK(st.kl_short == Approx(0.9 * ks_before + 0.8).epsilon(1e-14));
        CHECK(st.entropy_factor == Approx(2.0 / 0.5));
        CHECK(st.penalty ==
              Approx(0.1 * (st.kl_short - st.threshold) * (st.kl_short - st.threshold) * 4.0));
        CHECK(st.threshold >= 0.1);
        CHECK(st.threshold <= 0.6);
        // high entropy: the gate floors at 0.5
        SAFEKLController c2 = c;
        CHECK(c2.step(8.0, 10.0, 0.6).entropy_factor == 0.5);
        // gradient: uniform c·2(k_s − τ)·gate·0.1/N over the unmasked tokens
        const double dk = 0.1 * 2 * (st.kl_short - st.threshold) * 4.0 * 0.1 / 15.0;
        CHECK(rlpo_test::max_rel_err(p.grad, Mat<double>(Mat<double>::Constant(3, 5, dk))) < 1e-12);
        // below the threshold: no penalty, no gradient
        SAFEKLController fresh;
        const auto quiet = fresh.penalty(lp, Mat<double>(lp.array() - 0.01), m, 1.0, 0.5);
        CHECK(quiet.value == 0.0);
        CHECK(quiet.grad.isZero());
        // warm-up phase multiplier 1.5, then a plateau of constant rewards: 0.8
        SAFEKLController ph;
        ph.step(0.1, 1.0, 0.2);
        CHECK(ph.phase_multiplier() == 1.5);
        for (int k = 0; k < 60; ++k) ph.step(0.1, 1.0, 0.2);
        CHECK(ph.phase_multiplier() == 0.8);
    }
}

TEST_CASE("KL controllers: bad input gives the documented error",
          "[penalties][controllers][bad-input]") {
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::FixedKLController(-1.0),
                                    "penalties::FixedKLController(): beta: must be >= 0");
    rlpo::penalties::AdaptiveKLOptions o;
    o.target = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::AdaptiveKLController{o},
                                    "target: must be > 0");
    o = {};
    o.horizon = -5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::AdaptiveKLController{o},
                                    "horizon: must be > 0");
    rlpo::penalties::AdaptiveKLController a;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(a.update(std::numeric_limits<double>::quiet_NaN(), 1),
                                    "kl: must be finite");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(a.update(0.1, -1), "n_steps: must be >= 0");
    Vec<double> adv = Vec<double>::Ones(3), acc = Vec<double>::Constant(3, 0.5), bad_acc = acc;
    bad_acc(1) = 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::dads_weights(adv, bad_acc),
                                    "group_accuracy: must be in [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::dads_weights(adv, Vec<double>::Ones(2)),
                                    "group_accuracy: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::dads_weights(adv, acc, 0.0),
                                    "kappa: must be > 0");
    rlpo::penalties::SAFEOptions so;
    so.short_decay = 1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(SAFEKLController{so}, "decay: must be in [0, 1)");
    so = {};
    so.threshold_min = 0.7;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(SAFEKLController{so}, "need 0 < min <= max");
    SAFEKLController c;
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(c.penalty(x, Mat<double>::Zero(2, 2), m, 1.0, 0.0),
                                    "SAFEKLController::penalty(): ref_logp: expected shape [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(c.penalty(x, x, m, -1.0, 0.0), "entropy: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(c.step(0.1, 1.0, std::numeric_limits<double>::infinity()),
                                    "reward: must be finite");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(c.penalty(bad, x, m, 1.0, 0.0), "logp: NaN at [1, 2]");
    const auto empty = c.penalty(x, x, Mat<double>::Zero(2, 3), 1.0, 0.0);
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
}
