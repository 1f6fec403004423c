// Stable math: closed forms, naive references where they are safe, and VJPs by finite differences.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/core/math.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
namespace rt = rlpo::testing;
constexpr double inf = std::numeric_limits<double>::infinity();

TEST_CASE("scalar functions match closed forms and stay finite in their tails", "[core][math]") {
    for (double x : {-30.0, -5.0, -0.3, 0.0, 0.7, 4.0, 30.0}) {
        CHECK(rlpo::softplus(x) == Approx(std::log1p(std::exp(x))).epsilon(1e-14));
        CHECK(rlpo::sigmoid(x) == Approx(1.0 / (1.0 + std::exp(-x))).epsilon(1e-14));
        CHECK(rlpo::log_sigmoid(x) == Approx(-std::log1p(std::exp(-x))).epsilon(1e-14));
    }
    CHECK(rlpo::softplus(800.0) == 800.0);
    CHECK(rlpo::softplus(-800.0) == Approx(std::exp(-800.0)).margin(1e-300));
    CHECK(rlpo::log_sigmoid(-800.0) == -800.0);
    CHECK(rlpo::sigmoid(-800.0) >= 0.0);
    CHECK(rlpo::softplus(inf) == inf);
    CHECK(rlpo::softplus(-inf) == 0.0);
    for (double x : {-40.0, -3.0, -0.69, -0.7, -1e-3, -1e-12}) {
        // Reference: the plain formula in long double where it has no cancellation, series in
        // the two tails (log(1−e^x) ≈ −e^x − e^{2x}/2; ≈ log(−x) − x/2 + x²/24 near 0).
        long double ref = std::log(1.0L - std::exp(static_cast<long double>(x)));
        if (x < -30) ref = -std::exp(static_cast<long double>(x)) - std::exp(2.0L * x) / 2;
        if (x > -1e-6) ref = std::log(static_cast<long double>(-x)) - x / 2.0L + x * x / 24.0L;
        CHECK(rlpo::log1mexp(x) == Approx(static_cast<double>(ref)).epsilon(1e-12));
        const double h = 1e-7 * std::abs(x);
        const double fd = (rlpo::log1mexp(x + h) - rlpo::log1mexp(x - h)) / (2 * h);
        CHECK(rlpo::log1mexp_grad(x) == Approx(fd).epsilon(1e-5));
    }
    CHECK(rlpo::log1mexp(0.0) == -inf);
    CHECK(rlpo::log1mexp(-1e-300) == Approx(std::log(1e-300)).epsilon(1e-12));
}

TEST_CASE("online logsumexp equals the two-pass value across chunk boundaries", "[core][math]") {
    rt::Generator gen(1);
    for (Index V :
         {Index(1), Index(7), Index(255), Index(256), Index(257), Index(1000), Index(5000)}) {
        // An increasing ramp forces the running max to grow in every chunk.
        Mat<double> z(3, V);
        for (Index j = 0; j < V; ++j) {
            z(0, j) = 0.01 * static_cast<double>(j);
            z(1, j) = 50.0 * gen.normal();
            z(2, j) = -0.01 * static_cast<double>(j) + 700.0;  // would overflow exp naively
        }
        const auto lse = rlpo::logsumexp_rows(z);
        for (Index i = 0; i < 3; ++i) {
            const double mx = z.row(i).maxCoeff();
            const double ref = mx + std::log((z.row(i).array() - mx).exp().sum());
            CHECK(lse(i) == Approx(ref).epsilon(1e-13));
        }
    }
}

TEST_CASE("logsumexp / softmax / entropy handle -inf entries, dead and empty rows",
          "[core][math]") {
    Mat<double> z(3, 4);
    z << 0.0, -inf, 1.0, -inf,   //
        -inf, -inf, -inf, -inf,  //
        1e300, 0, 0, 0;
    const auto lse = rlpo::logsumexp_rows(z);
    CHECK(lse(0) == Approx(std::log(1.0 + std::exp(1.0))));
    CHECK(lse(1) == -inf);
    CHECK(lse(2) == Approx(1e300));
    const auto p = rlpo::softmax_rows(z);
    CHECK(p(0, 1) == 0.0);
    CHECK(p.row(0).sum() == Approx(1.0));
    CHECK(p.row(1).isZero());
    const auto lsm = rlpo::log_softmax_rows(z);
    CHECK(lsm(0, 1) == -inf);
    const auto H = rlpo::entropy_rows(z);
    const double p0 = 1.0 / (1.0 + std::exp(1.0));
    CHECK(H(0) == Approx(-(p0 * std::log(p0) + (1 - p0) * std::log(1 - p0))));
    CHECK(H(1) == 0.0);
    CHECK(H(2) == Approx(0.0).margin(1e-12));
    CHECK(rlpo::logsumexp(static_cast<const double*>(nullptr), 0) == -inf);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    Mat<double> zn(1, 600);
    zn.setZero();
    zn(0, 300) = nan;
    CHECK(std::isnan(rlpo::logsumexp_rows(zn)(0)));
}

TEMPLATE_TEST_CASE("VJPs of log-softmax, softmax and entropy match finite differences",
                   "[core][math]", float, double) {
    rt::Generator gen(7);
    const Mat<double> z = gen.logits(4, 9, 2.0);
    const Mat<double> g = gen.normal(4, 9);
    const Mat<double> gH = gen.normal(4, 1);
    const Mat<TestType> zs = z.cast<TestType>();
    const double tol = sizeof(TestType) == 4 ? 2e-3 : 1e-6;
    // Analytic VJPs in the test's scalar type; FD in double on the float-rounded point.
    const Mat<double> zr = zs.template cast<double>();
    const Mat<double> a1 = rlpo::log_softmax_vjp(zs, g.cast<TestType>()).template cast<double>();
    rlpo_test::require_fd_gradient(
        [&](const Mat<double>& x) { return (rlpo::log_softmax_rows(x).array() * g.array()).sum(); },
        zr, a1, tol, 1e-5);
    const Mat<double> a2 = rlpo::softmax_vjp(zs, g.cast<TestType>()).template cast<double>();
    rlpo_test::require_fd_gradient(
        [&](const Mat<double>& x) { return (rlpo::softmax_rows(x).array() * g.array()).sum(); }, zr,
        a2, tol, 1e-5);
    const Mat<double> a3 = rlpo::entropy_vjp(zs, gH.cast<TestType>()).template cast<double>();
    rlpo_test::require_fd_gradient(
        [&](const Mat<double>& x) {
            return (rlpo::entropy_rows(x).array() * gH.col(0).array()).sum();
        },
        zr, a3, tol, 1e-5);
}
