// On-policy distillation reward (OPD / ExOPD) and KDRL, four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/distill/on_policy.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::KDRLOptions;
using rlpo::penalties::KLEstimator;
namespace rt = rlpo::testing;

TEST_CASE("opd_reward: closed form, λ = 1 identity, masking, bad input", "[distill][opd]") {
    Mat<double> lp(1, 3), lt(1, 3), lr(1, 3), m(1, 3);
    lp << -1.0, -2.0, -0.5;
    lt << -0.5, -3.0, -0.5;
    lr << -1.5, -1.0, std::numeric_limits<double>::quiet_NaN();
    m << 1, 1, 0;
    const auto r = rlpo::distill::opd_reward(lp, lt, lr, m, 2.0);
    CHECK(r.reward(0, 0) == Approx(2.0 * (-0.5 + 1.5) - (-1.0 + 1.5)));
    CHECK(r.reward(0, 1) == Approx(2.0 * (-3.0 + 1.0) - (-2.0 + 1.0)));
    CHECK(r.reward(0, 2) == 0.0);  // masked, its NaN never read
    CHECK(r.metrics["opd_reverse_kl"] == Approx(((-1.0 + 0.5) + (-2.0 + 3.0)) / 2));
    const auto r1 = rlpo::distill::opd_reward(lp, lt, m);
    CHECK(r1.reward(0, 0) == -0.5 + 1.0);
    CHECK(r1.reward(0, 1) == -3.0 + 2.0);
    CHECK(r1.metrics["opd_reward"] == Approx(-r1.metrics["opd_reverse_kl"]));
    // λ = 1 with a reference: the reference cancels
    Mat<double> lr2 = lr;
    lr2(0, 2) = 0;
    const auto r2 = rlpo::distill::opd_reward(lp, lt, lr2, m, 1.0);
    CHECK(r2.reward == r1.reward);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::opd_reward(lp, lt, lr, m, std::nan("")),
                                    "distill::opd_reward(): lambda: must be finite");
    Mat<double> mm = m;
    mm(0, 2) = 1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::opd_reward(lp, lt, lr, mm, 2.0),
                                    "ref_logp: NaN at [0, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::opd_reward(lp, Mat<double>(lt.leftCols(2)), m),
                                    "teacher_logp: expected shape [1, 3]");
}

namespace {
struct Batch {
    Mat<double> logp, old, teacher, adv, mask;
    std::vector<double> correct;
};
Batch batch(std::uint64_t seed, Index B = 5, Index T = 7) {
    rt::Generator gen(seed);
    Batch b;
    b.logp = gen.logprobs(B, T);
    b.old = gen.perturbed(b.logp, 0.3);
    b.teacher = gen.perturbed(b.logp, 1.0);
    b.adv = gen.normal(B, T);
    b.mask = gen.mask(B, T, 1, false);
    for (Index i = 0; i < B; ++i) b.correct.push_back(i % 2 ? 1.0 : 0.0);
    return b;
}
}  // namespace

TEST_CASE("kdrl: finite differences and composition", "[distill][kdrl][fd][properties]") {
    const Batch b = batch(3);
    for (KLEstimator e : {KLEstimator::K1, KLEstimator::K2, KLEstimator::K3})
        for (bool mc : {false, true})
            for (Aggregation mode : rlpo_test::all_modes()) {
                KDRLOptions o;
                o.estimator = e;
                o.mask_correct = mc;
                o.beta = 0.3;
                rlpo::Normalizer n;
                n.mode = mode;
                const auto r =
                    rlpo::distill::kdrl(b.logp, b.old, b.teacher, b.adv, b.mask, o, b.correct, n);
                const auto near_kink = [&](Index k) {
                    const double ratio = std::exp(b.logp.data()[k] - b.old.data()[k]);
                    return std::abs(ratio - 0.8) < 1e-4 || std::abs(ratio - 1.2) < 1e-4;
                };
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        return rlpo::distill::kdrl(x, b.old, b.teacher, b.adv, b.mask, o, b.correct,
                                                   n, rlpo::no_grad<double>())
                            .value;
                    },
                    b.logp, r.grad, 1e-6, 1e-9, near_kink);
                // value = PPO + β·KL with the masked KD mask; write/add/none agree
                Mat<double> g = Mat<double>::Constant(b.logp.rows(), b.logp.cols(), 2.0);
                const auto ra = rlpo::distill::kdrl(b.logp, b.old, b.teacher, b.adv, b.mask, o,
                                                    b.correct, n, rlpo::add_to<double>(g, 0.5));
                CHECK(ra.value == Approx(0.5 * r.value).epsilon(1e-12));
                CHECK(rlpo_test::max_rel_err(
                          g, Mat<double>(Mat<double>::Constant(g.rows(), g.cols(), 2.0) +
                                         0.5 * r.grad)) < 1e-12);
            }
    // β = 0 is the GRPO surrogate alone
    KDRLOptions o;
    o.beta = 0;
    const auto r = rlpo::distill::kdrl(b.logp, b.old, b.teacher, b.adv, b.mask, o);
    const auto p = rlpo::policy::ppo_clip(b.logp, b.old, b.adv, b.mask, o.clip);
    CHECK(r.value == p.value);
    CHECK(r.grad == p.grad);
    // correct responses masked out of the KD term: the teacher there does not matter
    o.beta = 1.0;
    o.mask_correct = true;
    Batch c = b;
    c.teacher.row(1).setConstant(-30.0);
    CHECK(rlpo::distill::kdrl(b.logp, b.old, b.teacher, b.adv, b.mask, o, b.correct).value ==
          rlpo::distill::kdrl(c.logp, c.old, c.teacher, c.adv, c.mask, o, c.correct).value);
}

TEMPLATE_TEST_CASE("kdrl: agrees with the PyTorch autograd reference", "[distill][kdrl][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("distill", std::string("kdrl_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, teacher, adv, mask;
        KDRLOptions o;
        std::vector<double> correct;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 40;
    for (KLEstimator e : {KLEstimator::K1, KLEstimator::K2, KLEstimator::K3})
        for (bool mc : {false, true}) {
            const Batch b = batch(seed++, 4, 6);
            Run r;
            r.logp = b.logp.cast<S>();
            r.old = b.old.cast<S>();
            r.teacher = b.teacher.cast<S>();
            r.adv = b.adv.cast<S>();
            r.mask = b.mask.cast<S>();
            r.o.estimator = e;
            r.o.mask_correct = mc;
            r.o.beta = 0.05;
            r.correct = b.correct;
            r.n.mode = mc ? Aggregation::SeqMeanTokenMean : Aggregation::TokenMean;
            auto& c = tr.add<S>("kdrl");
            c.in("logp", r.logp)
                .in("old_logp", r.old)
                .in("teacher_logp", r.teacher)
                .in("adv", r.adv)
                .in("mask", r.mask);
            if (mc) {
                Mat<double> corr(4, 1);
                for (Index i = 0; i < 4; ++i) corr(i, 0) = b.correct[static_cast<std::size_t>(i)];
                c.in("correct", corr);
            }
            c.p("beta", r.o.beta)
                .s("estimator", rlpo::penalties::to_string(e))
                .s("agg", rlpo::to_string(r.n.mode));
            runs.push_back(std::move(r));
        }
    tr.run();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const auto& r = runs[i];
        INFO("case " << i);
        const auto res =
            rlpo::distill::kdrl(r.logp, r.old, r.teacher, r.adv, r.mask, r.o, r.correct, r.n);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value")) < rlpo_test::ref_tol<S>());
        CHECK(rlpo_test::max_rel_err(res.grad, tr.out(i, "grad")) < rlpo_test::ref_tol<S>());
        CHECK(rlpo_test::rel_err(res.metrics["kd_kl"], tr.scalar(i, "kd_kl")) <
              rlpo_test::ref_tol<S>());
    }
}

TEST_CASE("kdrl: bad input gives the documented error", "[distill][kdrl][bad-input]") {
    const Batch b = batch(9);
    KDRLOptions o;
    o.beta = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::kdrl(b.logp, b.old, b.teacher, b.adv, b.mask, o),
                                    "distill::kdrl(): beta: must be >= 0");
    o = {};
    o.mask_correct = true;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::kdrl(b.logp, b.old, b.teacher, b.adv, b.mask, o, {1.0}),
        "correct: expected 5 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::kdrl(b.logp, b.old, Mat<double>(b.teacher.leftCols(3)), b.adv, b.mask),
        "teacher_logp: expected shape [5, 7]");
    Mat<double> bad = b.teacher;
    bad(0, 0) = std::numeric_limits<double>::quiet_NaN();
    Mat<double> m = b.mask;
    m(0, 0) = 1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::kdrl(b.logp, b.old, bad, b.adv, m),
                                    "ref_logp: NaN at [0, 0]");
}
