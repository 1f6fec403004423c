// SinKD Sinkhorn distance with the gradient through the unrolled iterations: finite
// differences, PyTorch autograd of the unrolled iterations (float, double, bf16), properties,
// bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/distill/sinkhorn.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::SinkhornOptions;
namespace rt = rlpo::testing;
using bf16 = Eigen::bfloat16;

TEST_CASE("sinkhorn: gradient through the iterations equals central finite differences",
          "[distill][sinkhorn][fd]") {
    for (int iters : {1, 3, 20})
        for (double eps : {0.1, 0.5}) {
            INFO("iterations " << iters << " eps " << eps);
            rt::Generator gen(static_cast<std::uint64_t>(iters * 10) +
                              static_cast<std::uint64_t>(eps * 10));
            const Mat<double> z = gen.logits(6, 5, 2.0), y = gen.logits(6, 5, 2.0);
            Mat<double> mask = Mat<double>::Ones(3, 2);
            mask(2, 1) = 0;  // one row left out of the batch
            SinkhornOptions o;
            o.iterations = iters;
            o.epsilon = eps;
            o.scale = 0.7;
            const auto r = rlpo::distill::sinkhorn(z, y, mask, o);
            CHECK(r.grad.row(5).isZero(0.0));
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::distill::sinkhorn(x, y, mask, o, rlpo::no_grad<double>()).value;
                },
                z, r.grad, 1e-5, 1e-9);
        }
}

TEMPLATE_TEST_CASE("sinkhorn: agrees with PyTorch autograd of the unrolled iterations",
                   "[distill][sinkhorn][torch]", float, double, bf16) {
    using S = TestType;
    const std::string tag =
        std::is_same<S, double>::value ? "d" : (std::is_same<S, float>::value ? "f" : "b");
    rlpo_test::TorchReference tr("distill", "sinkhorn_" + tag);
    struct Run {
        Mat<S> z, y;
        Mat<double> mask;
        SinkhornOptions o;
    };
    std::vector<Run> runs;
    for (int variant = 0; variant < 3; ++variant) {
        rt::Generator gen(static_cast<std::uint64_t>(60 + variant));
        Run r;
        const Index N = variant == 2 ? 16 : 5, V = variant == 2 ? 200 : 7;
        r.z = gen.logits<S>(N, V, 2.0);
        r.y = gen.logits<S>(N, V, 2.0);
        r.mask = Mat<double>::Ones(N, 1);
        r.mask(1, 0) = 0;
        r.z(1, 0) = std::numeric_limits<S>::quiet_NaN();  // excluded row: never read
        r.o.iterations = variant == 0 ? 5 : 20;
        r.o.temperature = variant == 1 ? 1.0 : 2.0;
        r.o.scale = variant == 1 ? 0.01 : 1.0;
        auto& tc = tr.add<S>("sinkhorn");
        tc.in("student", r.z).in("teacher", r.y).in("mask", r.mask);
        tc.p("temperature", r.o.temperature)
            .p("epsilon", r.o.epsilon)
            .p("iterations", r.o.iterations);
        tc.p("scale", r.o.scale);
        runs.push_back(std::move(r));
    }
    tr.run();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const auto& r = runs[i];
        INFO("case " << i);
        const auto res = rlpo::distill::sinkhorn(r.z, r.y, r.mask, r.o);
        const double vt = std::is_same<S, double>::value ? 1e-10 : 1e-5;
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value")) < vt);
        CHECK(rlpo_test::rel_err(res.metrics["sinkhorn"], tr.scalar(i, "sinkhorn")) < vt);
        Mat<double> ref = tr.out(i, "grad");
        ref.row(1).setZero();  // torch's leaf row 1 is unused (NaN never entered the graph)
        const Mat<double> g = res.grad.template cast<double>();
        const double err = std::is_same<S, double>::value
                               ? rlpo_test::max_rel_err(g, ref)
                               : (g - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff();
        CHECK(err < (std::is_same<S, bf16>::value ? 1e-2 : vt));
    }
}

TEST_CASE("sinkhorn: properties", "[distill][sinkhorn][properties]") {
    rt::Generator gen(2);
    const Mat<double> z = gen.logits(8, 30, 3.0);
    const Mat<double> m = Mat<double>::Ones(8, 1);
    SECTION("the plan is doubly stochastic up to the last column normalisation: value ≤ max W") {
        const Mat<double> y = gen.logits(8, 30, 3.0);
        const auto r = rlpo::distill::sinkhorn(z, y, m);
        CHECK(r.value >= 0.0);
        CHECK(r.value <= 2.0 * 8);  // Σ_ij Π_ij W_ij with W ≤ 2 and column sums 1
    }
    SECTION("identical batches at small ε: the plan concentrates on the diagonal, value → 0") {
        SinkhornOptions o;
        o.epsilon = 0.01;
        o.iterations = 50;
        const auto r = rlpo::distill::sinkhorn(z, z, m, o);
        CHECK(r.value < 1e-6);
        CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-3);
    }
    SECTION("scale and GradientOut coefficient are linear") {
        const Mat<double> y = gen.logits(8, 30, 3.0);
        SinkhornOptions o;
        const auto a = rlpo::distill::sinkhorn(z, y, m, o);
        o.scale = 3.0;
        Mat<double> g(8, 30);
        const auto b = rlpo::distill::sinkhorn(z, y, m, o, rlpo::write_to<double>(g, 0.5));
        CHECK(b.value == Approx(1.5 * a.value).epsilon(1e-12));
        CHECK(rlpo_test::max_rel_err(g, Mat<double>(1.5 * a.grad)) < 1e-12);
    }
}

TEST_CASE("sinkhorn: bad input gives the documented error", "[distill][sinkhorn][bad-input]") {
    const Mat<double> z = Mat<double>::Zero(3, 4), m = Mat<double>::Ones(3, 1);
    SinkhornOptions o;
    o.epsilon = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::sinkhorn(z, z, m, o),
                                    "distill::sinkhorn(): epsilon: must be > 0");
    o = {};
    o.iterations = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::sinkhorn(z, z, m, o),
                                    "iterations: must be >= 1");
    o = {};
    o.temperature = -2;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::sinkhorn(z, z, m, o),
                                    "temperature: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::sinkhorn(z, Mat<double>(Mat<double>::Zero(2, 4)), m),
        "teacher_logits: expected shape [3, 4]");
    Mat<double> bad = z;
    bad(2, 1) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::sinkhorn(bad, z, m),
                                    "student_logits: +inf logit");
    const auto empty = rlpo::distill::sinkhorn(z, z, Mat<double>::Zero(3, 1));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero(0.0));
}
