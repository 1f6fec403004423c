// Entropy bonus over logits, four ways.
#include "policy/policy_support.hpp"

#include <rlpo/regularizers/entropy.hpp>

using namespace policy_test;
namespace rr = rlpo::regularizers;

TEST_CASE("entropy_bonus: gradient equals central finite differences", "[policy][entropy][fd]") {
    rt::Generator gen(50);
    const Index B = 4, T = 5, V = 7;
    Mat<double> z = gen.logits(B * T, V);
    z(3, 2) = -std::numeric_limits<double>::infinity();  // a zero-probability entry
    const Mat<double> m = gen.mask(B, T, 1, true);
    for (Aggregation mode : rlpo_test::all_modes()) {
        const rlpo::Normalizer n = norm_for(mode, 2);
        const auto r = rr::entropy_bonus(z, m, n);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                return rr::entropy_bonus(x, m, n, rlpo::no_grad<double>()).value;
            },
            z, r.grad, 1e-6, 1e-10);
    }
}

TEMPLATE_TEST_CASE("entropy_bonus: agrees with the PyTorch autograd reference",
                   "[policy][entropy][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy", std::string("entropy_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> z, m;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 1800;
    for (Aggregation mode : rlpo_test::all_modes())
        for (int adversarial = 0; adversarial < 2; ++adversarial) {
            rt::Generator gen(seed++);
            const Index B = 4, T = 6, V = 33;
            Run r{adversarial ? gen.adversarial_logits<S>(B * T, V, 8.0, 0.2)
                              : gen.logits<S>(B * T, V),
                  gen.mask<S>(B, T, 1, true), norm_for(mode, seed)};
            r.m(0, 0) = 0;
            r.z(0, 1) = std::numeric_limits<S>::quiet_NaN();  // masked row: never read
            auto& c = ref.add<S>("entropy_bonus");
            c.in("logits", r.z).in("mask", r.m);
            put_norm(c, r.n);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        const auto res = rr::entropy_bonus(r.z, r.m, r.n);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["entropy"], ref.scalar(k, "entropy"), 1e-12) < tol);
    }
}

TEST_CASE("entropy_bonus: properties", "[policy][entropy][properties]") {
    SECTION("uniform logits: H = log V, gradient 0 (the maximum); one-hot: H → 0") {
        const Mat<double> z = Mat<double>::Constant(6, 10, 0.7), m = Mat<double>::Ones(2, 3);
        const auto r = rr::entropy_bonus(z, m);
        CHECK(r.value == Approx(std::log(10.0)).epsilon(1e-14));
        CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-15);
        Mat<double> oh = Mat<double>::Zero(6, 10);
        oh.col(3).setConstant(200.0);
        CHECK(rr::entropy_bonus(oh, m).value < 1e-80);
    }
    SECTION("a GradientOut coefficient −β turns the bonus into the loss term −β·H") {
        rt::Generator gen(51);
        const Mat<double> z = gen.logits(6, 9), m = Mat<double>::Ones(2, 3);
        Mat<double> g = Mat<double>::Ones(6, 9);
        const auto plain = rr::entropy_bonus(z, m);
        const auto r = rr::entropy_bonus(z, m, {}, rlpo::add_to(g, -0.01));
        CHECK(r.value == Approx(-0.01 * plain.value));
        CHECK(rlpo_test::max_rel_err(g, Mat<double>(Mat<double>::Ones(6, 9) - 0.01 * plain.grad)) <
              1e-15);
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        rt::Generator gen(52);
        const Index B = 6, T = 4, V = 5;
        const Mat<double> z = gen.logits(B * T, V), m = gen.mask(B, T, 1, true);
        rlpo_test::Invariance inv;
        inv.grad_rows_per_seq = T;
        rlpo_test::require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rr::entropy_bonus(z.middleRows(r0 * T, nr * T), m.middleRows(r0, nr), n);
            },
            m, inv);
    }
}

TEST_CASE("entropy_bonus: the parallel loop gives the serial result and reports errors in order",
          "[policy][entropy][properties]") {
    rt::Generator gen(53);
    const Index B = 32, T = 16, V = 1024;  // 2^19 logits: the OpenMP path when enabled
    const Mat<double> z = gen.logits(B * T, V), m = gen.mask(B, T, 1, true);
    const rlpo::Normalizer n = rlpo_test::global_normalizer(Aggregation::SeqMeanTokenMean, m);
    const auto full = rr::entropy_bonus(z, m, n);
    double sum = 0;
    Mat<double> g(B * T, V);
    for (Index i = 0; i < B; ++i) {  // one sequence at a time: the serial path
        const auto part = rr::entropy_bonus(z.middleRows(i * T, T), m.middleRows(i, 1), n);
        sum += part.value;
        g.middleRows(i * T, T) = part.grad;
    }
    CHECK(rlpo_test::rel_err(sum, full.value) < 1e-12);
    CHECK(rlpo_test::max_rel_err(g, full.grad) < 1e-12);
    Mat<double> bad = z, mm = m;
    mm.row(30).setOnes();
    mm.row(9).setOnes();
    bad(30 * T, 0) = std::numeric_limits<double>::quiet_NaN();
    bad(9 * T + 3, 5) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::entropy_bonus(bad, mm), "logits: nan at [147, 5]");
}

TEST_CASE("entropy_bonus: bad input gives the documented error", "[policy][entropy][bad-input]") {
    const Mat<double> z = Mat<double>::Zero(6, 4), m = Mat<double>::Ones(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::entropy_bonus(Mat<double>(Mat<double>::Zero(5, 4)), m),
        "regularizers::entropy_bonus(): logits: expected 6 rows (B·T of mask [2, 3]), given 5");
    Mat<double> bad = z;
    bad(4, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::entropy_bonus(bad, m),
                                    "logits: nan at [4, 1] in an unmasked row");
    bad(4, 1) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::entropy_bonus(bad, m), "logits: inf at [4, 1]");
    Mat<double> dead = z;
    dead.row(2).setConstant(-std::numeric_limits<double>::infinity());
    const auto r = rr::entropy_bonus(dead, m);  // a row of only −inf: entropy 0, gradient 0
    CHECK(std::isfinite(r.value));
    CHECK(r.grad.row(2).isZero());
    Mat<double> negm = m;
    negm(1, 1) = -2;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::entropy_bonus(z, negm),
                                    "mask: entries must be finite and >= 0");
    const auto empty = rr::entropy_bonus(z, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
}
