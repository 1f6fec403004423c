// INPO (iterative Nash policy optimization, arXiv 2407.00617), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/inpo.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::inpo_loss;
using rlpo::preference::INPOOptions;
using Vec = Eigen::VectorXd;

/// Policy, reference and previous-iterate log-probs of B pairs, near each other.
struct Six {
    Vec pc, pr, rc, rr, tc, tr;
};
Six random_six(std::uint64_t seed, Index B, double spread) {
    rlpo::testing::Generator gen(seed);
    Six s;
    for (Vec* v : {&s.pc, &s.pr, &s.rc, &s.rr, &s.tc, &s.tr}) v->resize(B);
    for (Index i = 0; i < B; ++i) {
        s.rc(i) = -gen.uniform(5.0, 200.0);
        s.rr(i) = -gen.uniform(5.0, 200.0);
        s.tc(i) = s.rc(i) + gen.uniform(-spread, spread);
        s.tr(i) = s.rr(i) + gen.uniform(-spread, spread);
        s.pc(i) = s.tc(i) + gen.uniform(-spread, spread);
        s.pr(i) = s.tr(i) + gen.uniform(-spread, spread);
    }
    return s;
}

Mat<double> stacked(const Six& s) {
    Mat<double> x(2, s.pc.size());
    x.row(0) = s.pc.transpose();
    x.row(1) = s.pr.transpose();
    return x;
}

}  // namespace

TEST_CASE("inpo: gradient equals central finite differences", "[preference][inpo][fd]") {
    std::uint64_t seed = 3;
    for (double eta : {0.0075, 0.5})
        for (double ratio : {1.0 / 3.0, 0.9})
            for (double spread : {2.0, 60.0}) {
                INFO("eta " << eta << " ratio " << ratio << " spread " << spread);
                const Six s = random_six(seed++, 7, spread);
                INPOOptions o;
                o.eta = eta;
                o.tau = ratio * eta;
                if (seed % 2 == 0) o.num_pairs = 11.0;
                const auto r = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, o);
                REQUIRE(r.grad.rows() == 2);
                REQUIRE(r.grad.cols() == 7);
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        const Vec c = x.row(0).transpose(), q = x.row(1).transpose();
                        return inpo_loss(c, q, s.rc, s.rr, s.tc, s.tr, o, rlpo::no_grad<double>())
                            .value;
                    },
                    stacked(s), r.grad);
            }
}

TEMPLATE_TEST_CASE("inpo: agrees with the PyTorch autograd reference (ENPO's formula)",
                   "[preference][inpo][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_seed",
                                  std::string("inpo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr, tc, tr;
        INPOOptions o;
    };
    std::vector<Run> runs;
    const auto add = [&](const Six& s, const INPOOptions& o) {
        Run r{s.pc.cast<S>(),
              s.pr.cast<S>(),
              s.rc.cast<S>(),
              s.rr.cast<S>(),
              s.tc.cast<S>(),
              s.tr.cast<S>(),
              o};
        auto& c = ref.add<S>("inpo");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()))
            .in("prev_chosen_logps", Mat<double>(r.tc.template cast<double>()))
            .in("prev_rejected_logps", Mat<double>(r.tr.template cast<double>()));
        // the reference gets τ explicitly; the default (unset τ) must mean η/3
        c.p("eta", o.eta).p("tau", o.tau ? *o.tau : o.eta / 3.0);
        if (o.num_pairs) c.p("num_pairs", *o.num_pairs);
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 200;
    add(random_six(seed++, 16, 5.0), INPOOptions::paper());
    add(random_six(seed++, 16, 5.0), INPOOptions::mnpo());
    for (double eta : {0.0075, 0.05, 2.0})
        for (double ratio : {0.1, 1.0 / 3.0, 0.75}) {
            INPOOptions o;
            o.eta = eta;
            o.tau = ratio * eta;
            add(random_six(seed++, 9, 20.0), o);
            o.num_pairs = 40.0;
            Six a = random_six(seed++, 9, 400.0);  // large margins
            a.pc(0) = a.pr(0);                     // Δ_π = 0
            add(a, o);
        }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " eta " << r.o.eta << " tau " << r.o.tau_value());
        const auto res = inpo_loss(r.pc, r.pr, r.rc, r.rr, r.tc, r.tr, r.o);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const double grad_err = rlpo_test::max_rel_err(res.grad, ref.out(k, "grad"));
        INFO("gradient: max relative error " << grad_err);
        CHECK(grad_err < tol);
        for (const char* m : {"delta_pi_mean", "delta_ref_mean", "delta_t_mean", "h_mean",
                              "h_minus_target", "logps/chosen", "logps/rejected"}) {
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(k, m), 1e-9) < tol);
        }
    }
}

TEST_CASE("inpo: properties", "[preference][inpo][properties]") {
    const Six s = random_six(9, 10, 8.0);
    SECTION("the minimiser: h = 1/(2η) on every pair gives value 0 and gradient 0") {
        const INPOOptions o;  // η 0.0075, τ = η/3
        Vec pc = s.pc;
        for (Index i = 0; i < 10; ++i) {
            const double d_ref = s.rc(i) - s.rr(i), d_prev = s.tc(i) - s.tr(i);
            pc(i) = s.pr(i) + d_ref / 3 + 2 * d_prev / 3 + 1 / (2 * 0.0075);
        }
        const auto r = inpo_loss(pc, s.pr, s.rc, s.rr, s.tc, s.tr, o);
        CHECK(r.value < 1e-20);
        CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-10);
        CHECK(r.metrics["h_minus_target"] == Approx(0.0).margin(1e-10));
        CHECK(r.metrics["h_mean"] == Approx(1 / 0.015).epsilon(1e-12));
        // off it by e on pair 0: value e²/B, gradient ±2e/B
        pc(0) += 0.25;
        const auto q = inpo_loss(pc, s.pr, s.rc, s.rr, s.tc, s.tr, o);
        CHECK(q.value == Approx(0.0625 / 10).epsilon(1e-9));
        CHECK(q.grad(0, 0) == Approx(0.05).epsilon(1e-9));
        CHECK(q.grad(1, 0) == Approx(-0.05).epsilon(1e-9));
    }
    SECTION("previous iterate = reference: the IPO-like form (Δ_π − Δ_ref − 1/(2η))²") {
        INPOOptions o;
        o.eta = 0.2;
        const auto r = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.rc, s.rr, o);
        double v = 0;
        for (Index i = 0; i < 10; ++i) {
            const double e = (s.pc(i) - s.pr(i)) - (s.rc(i) - s.rr(i)) - 2.5;
            v += e * e / 10;
        }
        CHECK(r.value == Approx(v).epsilon(1e-12));
    }
    SECTION("τ → η removes the previous iterate; τ → 0 removes the reference") {
        INPOOptions o;
        o.eta = 0.1;
        o.tau = 0.1 * (1 - 1e-12);
        const auto near_eta = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, o);
        const auto no_prev =
            inpo_loss(s.pc, s.pr, s.rc, s.rr, Vec(Vec::Zero(10)), Vec(Vec::Zero(10)), o);
        CHECK(near_eta.value == Approx(no_prev.value).epsilon(1e-9));
        o.tau = 1e-15;
        const auto near_zero = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, o);
        const auto no_ref =
            inpo_loss(s.pc, s.pr, Vec(Vec::Zero(10)), Vec(Vec::Zero(10)), s.tc, s.tr, o);
        CHECK(near_zero.value == Approx(no_ref.value).epsilon(1e-9));
    }
    SECTION("unset τ is η/3 whatever η") {
        INPOOptions a, b;
        a.eta = b.eta = 0.3;
        b.tau = 0.1;
        CHECK(inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, a).value ==
              Approx(inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, b).value).epsilon(1e-14));
    }
    SECTION("swapping chosen and rejected of every input mirrors h about 0") {
        INPOOptions o;
        o.eta = 1e12;  // target 1/(2η) ≈ 0: the loss is symmetric under the swap
        o.tau = 3e11;
        const auto a = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, o);
        const auto b = inpo_loss(s.pr, s.pc, s.rr, s.rc, s.tr, s.tc, o);
        CHECK(a.value == Approx(b.value).epsilon(1e-9));
        CHECK(a.metrics["h_mean"] == Approx(-b.metrics["h_mean"]).epsilon(1e-12));
    }
    SECTION("micro-batches with a global pair count add up to the whole batch") {
        INPOOptions o;
        const auto whole = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, o);
        o.num_pairs = 10.0;
        rlpo_test::require_example_invariance(whole, 10, [&](Index r0, Index n) {
            return inpo_loss(s.pc.segment(r0, n), s.pr.segment(r0, n), s.rc.segment(r0, n),
                             s.rr.segment(r0, n), s.tc.segment(r0, n), s.tr.segment(r0, n), o);
        });
    }
    SECTION("GradientOut: write_to, add_to, no_grad; float and row-vector inputs") {
        const auto own = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr);
        Mat<double> buf = Mat<double>::Constant(2, 10, 3.0);
        const auto w =
            inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, {}, rlpo::write_to<double>(buf, 0.5));
        CHECK(w.grad.size() == 0);
        CHECK(w.value == Approx(0.5 * own.value).epsilon(1e-15));
        CHECK(rlpo_test::max_rel_err(buf, Mat<double>(0.5 * own.grad)) < 1e-15);
        (void)inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, {}, rlpo::add_to<double>(buf, -0.5));
        CHECK(buf.cwiseAbs().maxCoeff() < 1e-12);
        const auto n = inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, s.tr, {}, rlpo::no_grad<double>());
        CHECK(n.value == own.value);
        const Eigen::RowVectorXd row = s.tr.transpose();
        CHECK(inpo_loss(s.pc, s.pr, s.rc, s.rr, s.tc, row).value == own.value);
        const auto f = inpo_loss(s.pc.cast<float>(), s.pr.cast<float>(), s.rc.cast<float>(),
                                 s.rr.cast<float>(), s.tc.cast<float>(), s.tr.cast<float>());
        CHECK(f.value == Approx(own.value).epsilon(1e-4));
    }
    SECTION("B = 0: value 0, empty gradient, metrics 0") {
        const Vec e(0);
        const auto r = inpo_loss(e, e, e, e, e, e);
        CHECK(r.value == 0.0);
        CHECK(r.grad.size() == 0);
        CHECK(r.metrics["h_mean"] == 0.0);
    }
}

TEST_CASE("inpo: bad input gives the documented error", "[preference][inpo][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(2, -5.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, y, x, x, x, x),
                                    "preference::inpo_loss(): policy_rejected_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, y, x, x, x), "ref_chosen_logps: expected 3");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, y, x, x), "ref_rejected_logps: expected 3");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, y, x), "prev_chosen_logps: expected 3");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, x, y), "prev_rejected_logps: expected 3");
    const Mat<double> m = Mat<double>::Zero(3, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, m, x),
                                    "prev_chosen_logps: expected a vector");
    Vec bad = x;
    bad(2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, x, bad),
                                    "preference::inpo_loss(): prev_rejected_logps: NaN at pair 2");
    bad(2) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(bad, x, x, x, x, x),
                                    "policy_chosen_logps: non-finite value -inf at pair 2");
    INPOOptions o;
    o.eta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, x, x, o),
                                    "preference::inpo_loss(): eta: must be > 0, given 0");
    o.eta = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, x, x, o), "eta: must be > 0");
    o = {};
    for (double tau : {0.0, -0.001, 0.0075, 0.01, std::numeric_limits<double>::quiet_NaN()}) {
        o.tau = tau;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, x, x, o), "tau: must be in (0, eta)");
    }
    o = {};
    o.num_pairs = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(inpo_loss(x, x, x, x, x, x, o), "num_pairs: must be > 0");
}
