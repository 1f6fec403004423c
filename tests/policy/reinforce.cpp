// REINFORCE / GPG, four ways: finite differences, PyTorch autograd, properties, bad input.
#include "policy/policy_support.hpp"

#include <rlpo/policy/reinforce.hpp>

using namespace policy_test;

TEST_CASE("reinforce: gradient equals central finite differences", "[policy][reinforce][fd]") {
    const Batch b = spread_batch(11);
    for (Aggregation mode : rlpo_test::all_modes())
        for (bool weighted : {false, true}) {
            const rlpo::Normalizer n = norm_for(mode, 1);
            rlpo::policy::TokenWeights<double> w;
            if (weighted) w.emplace(b.w);
            const auto r = rlpo::policy::reinforce(b.logp, b.adv, b.mask, n, {}, w);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::reinforce(x, b.adv, b.mask, n, rlpo::no_grad<double>(), w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-10);
        }
}

TEMPLATE_TEST_CASE("reinforce: agrees with the PyTorch autograd reference",
                   "[policy][reinforce][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy",
                                  std::string("reinforce_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, adv, mask, w;
        rlpo::Normalizer norm;
        bool weighted;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 500;
    for (Aggregation mode : rlpo_test::all_modes())
        for (bool weighted : {false, true}) {
            const Batch b = spread_batch(seed++);
            Run r{b.logp.cast<S>(), b.adv.cast<S>(),      b.mask.cast<S>(),
                  b.w.cast<S>(),    norm_for(mode, seed), weighted};
            r.mask(2, 3) = 0;
            r.logp(2, 3) = std::numeric_limits<S>::quiet_NaN();  // masked garbage, never read
            auto& c = ref.add<S>("reinforce");
            c.in("logp", r.logp).in("advantages", r.adv).in("mask", r.mask);
            if (weighted) c.in("is_weights", r.w);
            put_norm(c, r.norm);
            runs.push_back(std::move(r));
        }
    ref.run();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        rlpo::policy::TokenWeights<S> w;
        if (r.weighted) w.emplace(r.w);
        const auto res = rlpo::policy::reinforce(r.logp, r.adv, r.mask, r.norm, {}, w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < rlpo_test::ref_tol<S>());
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < rlpo_test::ref_tol<S>());
    }
}

TEST_CASE("reinforce: properties", "[policy][reinforce][properties]") {
    const Batch b = spread_batch(3);
    SECTION("closed form: token-sum value −Σ m·A·logp, gradient −m·A") {
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rlpo::policy::reinforce(b.logp, b.adv, b.mask, n);
        CHECK(r.value ==
              Approx(-(b.mask.array() * b.adv.array() * b.logp.array()).sum()).epsilon(1e-13));
        CHECK(rlpo_test::max_rel_err(r.grad, Mat<double>(-(b.mask.array() * b.adv.array()))) <
              1e-15);
        CHECK(r.metrics.empty());
    }
    SECTION("score-function identity: the expected gradient over a categorical equals −∇E[A]") {
        // One position, vocabulary of 5 with softmax(z): Σ_y π(y)·∂(−A_y·log π(y))/∂z =
        // −∂(Σ_y π(y) A_y)/∂z, checked by exact enumeration through the chain rule.
        const double z[5] = {0.3, -1.2, 2.0, 0.0, -0.4}, A[5] = {1.0, -0.5, 0.25, 2.0, -1.5};
        double lse = 0;
        for (double v : z) lse += std::exp(v);
        lse = std::log(lse);
        double pi[5], EA = 0;
        for (int y = 0; y < 5; ++y) pi[y] = std::exp(z[y] - lse), EA += pi[y] * A[y];
        for (int j = 0; j < 5; ++j) {
            double expected_grad = 0;  // Σ_y π_y · (∂loss_y/∂logp_y) · ∂logp_y/∂z_j
            for (int y = 0; y < 5; ++y) {
                Mat<double> lp(1, 1), a(1, 1), m = Mat<double>::Ones(1, 1);
                lp(0, 0) = z[y] - lse;
                a(0, 0) = A[y];
                const auto r = rlpo::policy::reinforce(lp, a, m);
                expected_grad += pi[y] * r.grad(0, 0) * ((y == j ? 1.0 : 0.0) - pi[j]);
            }
            const double dEA = pi[j] * (A[j] - EA);  // ∂E[A]/∂z_j
            CHECK(expected_grad == Approx(-dEA).margin(1e-15));
        }
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::reinforce(b.logp.middleRows(r0, nr), b.adv.middleRows(r0, nr),
                                               b.mask.middleRows(r0, nr), n);
            },
            b.mask);
    }
    SECTION("weights multiply the per-token loss; masked garbage is never read") {
        Mat<double> lp = b.logp;
        lp(0, 0) = std::numeric_limits<double>::quiet_NaN();
        Mat<double> m = b.mask, w = b.w;
        m(0, 0) = 0;
        w(0, 0) = -5;  // masked: never read
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rlpo::policy::reinforce(lp, b.adv, m, n, {}, w);
        double expect = 0;
        for (Index k = 1; k < lp.size(); ++k)
            expect -= m.data()[k] * w.data()[k] * b.adv.data()[k] * lp.data()[k];
        CHECK(r.value == Approx(expect).epsilon(1e-13));
        CHECK(r.grad(0, 0) == 0.0);
    }
}

TEST_CASE("reinforce: bad input gives the documented error", "[policy][reinforce][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::reinforce(x, y, m),
        "policy::reinforce(): advantages: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(x, x, y), "mask: expected shape");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(bad, x, m), "logp: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(x, bad, m),
                                    "advantages: NaN at [1, 2]");
    Mat<double> w = m;
    w(0, 1) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::reinforce(x, x, m, {}, {}, w),
        "is_weights: entries under a non-zero mask must be finite and >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(x, x, m, {}, {}, y),
                                    "is_weights: expected shape");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(ninf, x, m),
                                    "non-finite loss or gradient");
    // A = 1: l = +inf (a zero-probability token cannot have been sampled): rejected, naming the
    // inputs, as every non-finite per-token loss
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(ninf, m, m),
                                    "inputs at [0, 0] give a non-finite loss or gradient");
    {  // logp = {−inf, −inf}, A = {1, −1}: l = ±inf per token (the sum used to be NaN)
        Mat<double> lp(1, 2), a(1, 2), m2 = Mat<double>::Ones(1, 2);
        lp << -std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity();
        a << 1, -1;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(lp, a, m2),
                                        "inputs at [0, 0] give a non-finite loss or gradient");
        // finite but huge: −A·logp = 1e300·1e30 overflows per token → named as well
        lp << -1e30, -1e30;
        a << 1e300, 1e300;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::reinforce(lp, a, m2),
                                        "give a non-finite loss or gradient");
        // each per-token loss finite (1e308), their sum overflows → numerical_error
        lp << -1, -1;
        a << 1e308, 1e308;
        rlpo::Normalizer sum;
        sum.mode = rlpo::Aggregation::TokenSum;
        RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::policy::reinforce(lp, a, m2, sum), "value");
        // a finite gradient −A = 1e300 times a mask weight 1e30 under token-sum overflows
        Mat<double> mw = Mat<double>::Constant(1, 2, 1e30);
        lp << -1e-300, -1e-300;
        a << 1e300, 1e300;
        RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::policy::reinforce(lp, a, mw, sum), "gradient at [0, 0]");
        // in float the weighted gradient 1e30·1e30 overflows the storage type
        Mat<float> lpf = Mat<float>::Constant(1, 2, -1e-30f),
                   af = Mat<float>::Constant(1, 2, 1e30f), mf = Mat<float>::Constant(1, 2, 1e30f);
        RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::policy::reinforce(lpf, af, mf, sum),
                                     "gradient at [0, 0]");
    }
    const auto empty = rlpo::policy::reinforce(x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
}
