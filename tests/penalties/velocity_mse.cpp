// UniGRPO velocity-field MSE penalty, four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/penalties/velocity_mse.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::penalties::VelocityMSEOptions;
namespace rt = rlpo::testing;

namespace {
VelocityMSEOptions make(double beta, VelocityMSEOptions::Reduction red) {
    VelocityMSEOptions o;
    o.beta = beta;
    o.reduction = red;
    return o;
}
}  // namespace

TEST_CASE("velocity_mse: gradient equals central finite differences", "[penalties][velocity][fd]") {
    rt::Generator gen(81);
    const Index B = 3, T = 4, D = 6;
    const Mat<double> v = gen.normal(B * T, D), vr = gen.normal(B * T, D),
                      m = gen.mask(B, T, 1, true);
    for (auto red : {VelocityMSEOptions::Reduction::Mean, VelocityMSEOptions::Reduction::Sum})
        for (Aggregation mode : rlpo_test::all_modes()) {
            rlpo::Normalizer n;
            n.mode = mode;
            const auto r = rlpo::penalties::velocity_mse(v, vr, m, make(0.7, red), n);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::penalties::velocity_mse(x, vr, m, make(0.7, red), n,
                                                         rlpo::no_grad<double>())
                        .value;
                },
                v, r.grad, 1e-6, 1e-10);
        }
}

TEMPLATE_TEST_CASE("velocity_mse: agrees with the PyTorch autograd reference",
                   "[penalties][velocity][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("penalties",
                                 std::string("velocity_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> v, vr, mask;
        VelocityMSEOptions o;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 950;
    for (auto red : {VelocityMSEOptions::Reduction::Mean, VelocityMSEOptions::Reduction::Sum})
        for (Aggregation mode : rlpo_test::all_modes()) {
            rt::Generator gen(seed++);
            Run r;
            const Index B = 4, T = 3, D = 16;
            r.v = gen.normal<S>(B * T, D, 2.0);
            r.vr = gen.normal<S>(B * T, D, 2.0);
            r.mask = gen.mask<S>(B, T, 1, true);
            r.mask(0, 1) = 0;
            r.v(1, 3) = std::numeric_limits<S>::quiet_NaN();  // row 1 = (0, 1): masked garbage
            r.o = make(0.05 * static_cast<double>(seed % 4 + 1), red);
            r.n.mode = mode;
            if (seed % 2) r.n.num_tokens = 30.0, r.n.num_seqs = 7.0;
            auto& c = tr.add<S>("velocity_mse");
            c.in("v", r.v).in("v_ref", r.vr).in("mask", r.mask);
            c.p("beta", r.o.beta)
                .s("reduction", red == VelocityMSEOptions::Reduction::Mean ? "mean" : "sum");
            c.s("agg", rlpo::to_string(mode));
            if (r.n.num_tokens) c.p("num_tokens", *r.n.num_tokens);
            if (r.n.num_seqs) c.p("num_seqs", *r.n.num_seqs);
            runs.push_back(std::move(r));
        }
    tr.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i);
        const auto& r = runs[i];
        const auto res = rlpo::penalties::velocity_mse(r.v, r.vr, r.mask, r.o, r.n);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, tr.out(i, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["velocity_mse"], tr.scalar(i, "velocity_mse")) < tol);
    }
}

TEST_CASE("velocity_mse: properties", "[penalties][velocity][properties]") {
    rt::Generator gen(83);
    const Index B = 4, T = 2, D = 5;
    const Mat<double> v = gen.normal(B * T, D), vr = gen.normal(B * T, D),
                      m = Mat<double>::Ones(B, T);
    SECTION("v = v_ref: zero; closed form on one row; Sum = D × Mean") {
        const auto z = rlpo::penalties::velocity_mse(v, v, m);
        CHECK(z.value == 0.0);
        CHECK(z.grad.isZero());
        Mat<double> a(1, 2), b(1, 2);
        a << 1.0, 3.0;
        b << 0.0, 1.0;
        const auto one = rlpo::penalties::velocity_mse(
            a, b, Mat<double>::Ones(1, 1), make(2.0, VelocityMSEOptions::Reduction::Mean));
        CHECK(one.value == Approx(2.0 * (1.0 + 4.0) / 2));
        CHECK(one.grad(0, 0) == Approx(2.0 * 2 * 1.0 / 2));
        CHECK(one.grad(0, 1) == Approx(2.0 * 2 * 2.0 / 2));
        const auto mean =
            rlpo::penalties::velocity_mse(v, vr, m, make(1.0, VelocityMSEOptions::Reduction::Mean));
        const auto sum =
            rlpo::penalties::velocity_mse(v, vr, m, make(1.0, VelocityMSEOptions::Reduction::Sum));
        CHECK(sum.value == Approx(D * mean.value).epsilon(1e-14));
    }
    SECTION("micro-batches with global counts sum to the whole batch") {
        Mat<double> mm = gen.mask(B, T, 1, true);
        rlpo_test::Invariance inv;
        inv.grad_rows_per_seq = T;
        inv.tol = 1e-13;
        rlpo_test::require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::penalties::velocity_mse(Mat<double>(v.middleRows(r0 * T, nr * T)),
                                                     Mat<double>(vr.middleRows(r0 * T, nr * T)),
                                                     Mat<double>(mm.middleRows(r0, nr)), {}, n);
            },
            mm, inv);
    }
}

TEST_CASE("velocity_mse: bad input gives the documented error",
          "[penalties][velocity][bad-input]") {
    const Mat<double> v = Mat<double>::Zero(4, 3), m = Mat<double>::Ones(2, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::velocity_mse(v, Mat<double>::Zero(4, 2), m),
                                    "penalties::velocity_mse(): v_ref: expected shape [4, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::velocity_mse(v, v, Mat<double>::Ones(1, 3)),
                                    "mask: expected 4 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::velocity_mse(v, v, m, make(-1.0, VelocityMSEOptions::Reduction::Mean)),
        "beta: must be >= 0");
    Mat<double> bad = v;
    bad(2, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::velocity_mse(bad, v, m),
                                    "v: non-finite value at [2, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::velocity_mse(v, bad, m),
                                    "v_ref: non-finite value at [2, 1]");
    const auto empty = rlpo::penalties::velocity_mse(v, v, Mat<double>::Zero(2, 2));
    CHECK(empty.value == 0.0);
    CHECK(empty.metrics["velocity_mse"] == 0.0);
}
