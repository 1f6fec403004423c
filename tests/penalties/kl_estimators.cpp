// Token KL estimators k1 / abs / k2 / k3, four ways, plus the exact-enumeration truth table.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/core/math.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::penalties::KLEstimator;
using rlpo::penalties::KLOptions;
namespace rt = rlpo::testing;
constexpr double inf = std::numeric_limits<double>::infinity();

static const KLEstimator kAll[] = {KLEstimator::K1, KLEstimator::Abs, KLEstimator::K2, KLEstimator::K3};

TEST_CASE("kl_penalty: gradient equals central finite differences", "[penalties][kl][fd]") {
    rt::Generator gen(31);
    const Mat<double> logp = gen.logprobs(6, 9);
    Mat<double> ref = gen.perturbed(logp, 1.0);
    ref(0, 0) = logp(0, 0) + 25.0;  // beyond the ±20 clamp
    ref(0, 1) = logp(0, 1) - 3.0;   // k3 value e^3 − 4 ≈ 16 > 10: value clamp
    const Mat<double> m = gen.mask(6, 9, 1, true);
    for (KLEstimator e : kAll)
        for (Aggregation mode : rlpo_test::all_modes()) {
            INFO(rlpo::penalties::to_string(e) << " " << rlpo::to_string(mode));
            rlpo::Normalizer n;
            n.mode = mode;
            const KLOptions o = KLOptions::verl(e);
            const auto r = rlpo::penalties::kl_penalty(logp, ref, m, o, n);
            const auto near_kink = [&](Index k) {
                const double d = logp.data()[k] - ref.data()[k];
                const double v = std::exp(-d) + d - 1;
                return std::abs(d) < 1e-4 || std::abs(std::abs(d) - 20) < 1e-4 || std::abs(v - 10) < 1e-3;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::penalties::kl_penalty(x, ref, m, o, n, rlpo::no_grad<double>()).value;
                },
                logp, r.grad, 1e-6, 1e-10, near_kink);
        }
}

TEMPLATE_TEST_CASE("kl_penalty: agrees with the PyTorch autograd reference", "[penalties][kl][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("penalties", std::string("kl_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, ref, mask;
        KLOptions o;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 300;
    for (KLEstimator e : kAll)
        for (bool trl : {false, true})
            for (Aggregation mode : rlpo_test::all_modes()) {
                rt::Generator gen(seed++);
                Run r;
                r.logp = gen.logprobs<S>(7, 11);
                r.ref = gen.perturbed<S>(r.logp, 2.0);
                r.ref(0, 0) = r.logp(0, 0) + S(22);  // beyond the clamp
                r.ref(0, 2) = r.logp(0, 2) - S(21);
                r.ref(1, 0) = r.logp(1, 0) - S(4);   // k3 value clamp
                r.mask = gen.mask<S>(7, 11, 1, true);
                r.mask.row(0).setOnes();
                r.mask.row(1).setOnes();
                r.mask(2, 0) = 0;
                r.logp(2, 0) = std::numeric_limits<S>::quiet_NaN();  // masked garbage
                if (!trl) {
                    r.logp(1, 3) = -std::numeric_limits<S>::infinity();  // clamped k3: finite
                    if (e != KLEstimator::K3) r.logp(1, 3) = S(-50);
                }
                r.o = trl ? KLOptions::trl(e) : KLOptions::verl(e);
                r.n.mode = mode;
                if (seed % 2) r.n.num_tokens = 200.0, r.n.num_seqs = 20.0;
                auto& c = tr.add<S>("kl_penalty");
                c.in("logp", r.logp).in("ref_logp", r.ref).in("mask", r.mask);
                c.p("log_ratio_clamp", r.o.log_ratio_clamp).p("value_clamp", r.o.value_clamp);
                c.s("estimator", rlpo::penalties::to_string(e)).s("agg", rlpo::to_string(mode));
                if (r.n.num_tokens) c.p("num_tokens", *r.n.num_tokens);
                if (r.n.num_seqs) c.p("num_seqs", *r.n.num_seqs);
                runs.push_back(std::move(r));
            }
    tr.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i);
        const auto& r = runs[i];
        const auto res = rlpo::penalties::kl_penalty(r.logp, r.ref, r.mask, r.o, r.n);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, tr.out(i, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["kl"], tr.scalar(i, "kl")) < tol);
    }
}

TEST_CASE("kl estimators: what each gradient follows, by exact enumeration", "[penalties][kl][properties]") {
    // Small vocabulary; a "batch" of one row whose column x is the sample x, weighted by π(x)
    // through the mask, summed (token-sum): value = E_π[k(x)], grad_x = π(x)·∂k/∂logp(x).
    // The expected gradient w.r.t. the policy logits z is then J^T g of log-softmax.
    rt::Generator gen(77);
    const Index V = 6;
    const Mat<double> z = gen.logits(1, V, 1.0), zr = gen.logits(1, V, 1.0);
    const Mat<double> lp = rlpo::log_softmax_rows(z), lref = rlpo::log_softmax_rows(zr);
    const Mat<double> pi = lp.array().exp();
    rlpo::Normalizer sum;
    sum.mode = Aggregation::TokenSum;
    const auto expected_grad = [&](KLEstimator e) {
        const auto r = rlpo::penalties::kl_penalty(lp, lref, pi, KLOptions::trl(e), sum);
        return Mat<double>(rlpo::log_softmax_vjp(z, r.grad));
    };
    const auto reverse_kl = [&](const Mat<double>& zz) {
        const Mat<double> l = rlpo::log_softmax_rows(zz);
        return (l.array().exp() * (l - lref).array()).sum();
    };
    const auto forward_kl = [&](const Mat<double>& zz) {
        const Mat<double> l = rlpo::log_softmax_rows(zz);
        return (lref.array().exp() * (lref - l).array()).sum();
    };
    const auto fd = [&](auto&& f) {
        Mat<double> g(1, V), x = z;
        for (Index j = 0; j < V; ++j) {
            const double h = 1e-6;
            x(0, j) = z(0, j) + h;
            const double fp = f(x);
            x(0, j) = z(0, j) - h;
            const double fm = f(x);
            x(0, j) = z(0, j);
            g(0, j) = (fp - fm) / (2 * h);
        }
        return g;
    };
    const Mat<double> g_rev = fd(reverse_kl), g_fwd = fd(forward_kl);
    // k1 → 0
    CHECK(expected_grad(KLEstimator::K1).cwiseAbs().maxCoeff() < 1e-14);
    // k2 → ∇ KL(π‖π_ref)
    CHECK(rlpo_test::max_rel_err(expected_grad(KLEstimator::K2), g_rev) < 1e-7);
    // k3 → ∇ KL(π_ref‖π), the forward KL — not the reverse KL its value estimates
    CHECK(rlpo_test::max_rel_err(expected_grad(KLEstimator::K3), g_fwd) < 1e-7);
    CHECK(rlpo_test::max_rel_err(expected_grad(KLEstimator::K3), g_rev) > 1e-2);
    // and the values: E_π[k1] = E_π[k3] = KL(π‖π_ref) exactly
    const double kl = reverse_kl(z);
    CHECK(rlpo::penalties::kl_penalty(lp, lref, pi, KLOptions::trl(KLEstimator::K1), sum).value == Approx(kl).epsilon(1e-12));
    CHECK(rlpo::penalties::kl_penalty(lp, lref, pi, KLOptions::trl(KLEstimator::K3), sum).value == Approx(kl).epsilon(1e-12));
}

TEST_CASE("kl estimators: closed-form values and names", "[penalties][kl][properties]") {
    Mat<double> lp(1, 3), ref(1, 3);
    lp << -1.0, -2.0, -0.5;
    ref << -1.5, -2.0, -0.1;
    const Mat<double> m = Mat<double>::Ones(1, 3);
    rlpo::Normalizer sum;
    sum.mode = Aggregation::TokenSum;
    auto v = [&](KLEstimator e) { return rlpo::penalties::kl_penalty(lp, ref, m, KLOptions::verl(e), sum).value; };
    CHECK(v(KLEstimator::K1) == Approx(0.5 + 0.0 - 0.4));
    CHECK(v(KLEstimator::Abs) == Approx(0.5 + 0.0 + 0.4));
    CHECK(v(KLEstimator::K2) == Approx(0.5 * (0.25 + 0.16)));
    CHECK(v(KLEstimator::K3) == Approx((std::exp(-0.5) + 0.5 - 1) + (std::exp(0.4) - 0.4 - 1)));
    const auto same = rlpo::penalties::kl_penalty(lp, lp, m);
    CHECK(same.value == 0.0);
    CHECK(same.grad.isZero());
    CHECK(rlpo::penalties::parse_kl_estimator("low_var_kl") == KLEstimator::K3);
    CHECK(rlpo::penalties::parse_kl_estimator("mse") == KLEstimator::K2);
    CHECK(rlpo::penalties::parse_kl_estimator("kl") == KLEstimator::K1);
    CHECK(rlpo::penalties::parse_kl_estimator("abs") == KLEstimator::Abs);
    // k3 with −inf current log-prob is clamped to the value cap, gradient 0
    Mat<double> ninf = lp;
    ninf(0, 0) = -inf;
    const auto r = rlpo::penalties::kl_penalty(ninf, ref, m, KLOptions::verl(), sum);
    CHECK(std::isfinite(r.value));
    CHECK(r.grad(0, 0) == 0.0);
}

TEST_CASE("kl_penalty: bad input gives the documented error", "[penalties][kl][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3), y(3, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, y, m),
                                    "penalties::kl_penalty(): ref_logp: expected shape [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, x, y), "mask: expected shape");
    KLOptions o;
    o.log_ratio_clamp = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, x, m, o), "log_ratio_clamp: must be > 0");
    o = {};
    o.value_clamp = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, x, m, o), "value_clamp: must be > 0");
    Mat<double> bad = x;
    bad(0, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::kl_penalty(x, bad, m), "ref_logp: NaN at [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::parse_kl_estimator("k4"),
                                    "valid names: kl, k1, abs, mse, k2, low_var_kl, k3");
    const auto empty = rlpo::penalties::kl_penalty(x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.metrics["kl"] == 0.0);
}
