// RPO (DPO + η·β·NLL of the chosen response, arXiv 2405.16436), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/rpo.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::CompletionLengths;
using rlpo::preference::DPOLoss;
using rlpo::preference::rpo_loss;
using rlpo::preference::RPOOptions;
using Vec = Eigen::VectorXd;

struct Pairs {
    Vec pc, pr, rc, rr;
    CompletionLengths len;
};
Pairs random_pairs(std::uint64_t seed, Index B, double spread) {
    rlpo::testing::Generator gen(seed);
    Pairs p;
    for (Vec* v : {&p.pc, &p.pr, &p.rc, &p.rr, &p.len.chosen, &p.len.rejected}) v->resize(B);
    for (Index i = 0; i < B; ++i) {
        p.rc(i) = -gen.uniform(5.0, 80.0);
        p.rr(i) = -gen.uniform(5.0, 80.0);
        p.pc(i) = p.rc(i) + gen.uniform(-spread, spread);
        p.pr(i) = p.rr(i) + gen.uniform(-spread, spread);
        p.len.chosen(i) = std::floor(gen.uniform(1.0, 40.0));
        p.len.rejected(i) = std::floor(gen.uniform(1.0, 40.0));
    }
    return p;
}

Mat<double> stacked(const Pairs& p) {
    Mat<double> x(2, p.pc.size());
    x.row(0) = p.pc.transpose();
    x.row(1) = p.pr.transpose();
    return x;
}

RPOOptions options(DPOLoss l, double beta, double eta) {
    RPOOptions o;
    o.dpo = rlpo::preference::DPOOptions::of(l, beta);
    o.dpo.label_smoothing = 0.1;
    o.eta = eta;
    return o;
}

}  // namespace

TEST_CASE("rpo: gradient equals central finite differences", "[preference][rpo][fd]") {
    std::uint64_t seed = 1;
    for (DPOLoss l : {DPOLoss::Sigmoid, DPOLoss::IPO, DPOLoss::Robust, DPOLoss::SPPOHard})
        for (double beta : {0.01, 0.5})
            for (double eta : {0.005, 2.0}) {
                INFO(rlpo::preference::to_string(l) << " beta " << beta << " eta " << eta);
                const Pairs p = random_pairs(seed++, 8, 10.0);
                RPOOptions o = options(l, beta, eta);
                if (seed % 2 == 0) o.dpo.num_pairs = 13.0;
                const auto r = rpo_loss(p.pc, p.pr, p.rc, p.rr, o, {}, p.len);
                REQUIRE(r.grad.rows() == 2);
                REQUIRE(r.grad.cols() == 8);
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        const Vec c = x.row(0).transpose(), q = x.row(1).transpose();
                        return rpo_loss(c, q, p.rc, p.rr, o, rlpo::no_grad<double>(), p.len).value;
                    },
                    stacked(p), r.grad);
            }
}

TEMPLATE_TEST_CASE("rpo: agrees with the PyTorch autograd reference (authors' trainer)",
                   "[preference][rpo][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_seed",
                                  std::string("rpo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr;
        CompletionLengths len;
        RPOOptions o;
    };
    std::vector<Run> runs;
    const auto add = [&](const Pairs& p, const RPOOptions& o) {
        Run r{p.pc.cast<S>(), p.pr.cast<S>(), p.rc.cast<S>(), p.rr.cast<S>(), p.len, o};
        auto& c = ref.add<S>("rpo");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()))
            .in("len_chosen", Mat<double>(p.len.chosen))
            .in("len_rejected", Mat<double>(p.len.rejected));
        c.p("beta", o.dpo.beta)
            .p("eta", o.eta)
            .p("label_smoothing", o.dpo.label_smoothing)
            .p("sigmoid_smoothing", o.dpo.sigmoid_label_smoothing ? 1.0 : 0.0);
        if (o.dpo.num_pairs) c.p("num_pairs", *o.dpo.num_pairs);
        c.s("loss", rlpo::preference::to_string(o.dpo.terms.front().loss));
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 100;
    add(random_pairs(seed++, 12, 3.0), RPOOptions{});                // the paper's recipe
    add(random_pairs(seed++, 12, 3.0), RPOOptions::zephyr_gemma());  // β 0.05
    for (DPOLoss l : {DPOLoss::Sigmoid, DPOLoss::Hinge, DPOLoss::IPO, DPOLoss::Robust,
                      DPOLoss::EXOPair, DPOLoss::NCAPair, DPOLoss::APOZero, DPOLoss::BCOPair})
        for (double eta : {0.005, 5e-7, 1.5}) {
            RPOOptions o = options(l, 0.3, eta);
            add(random_pairs(seed++, 9, 4.0), o);
            // adversarial: saturated sigmoids and a tie
            Pairs a = random_pairs(seed++, 9, 300.0);
            a.pc(0) = a.rc(0);
            a.pr(0) = a.rr(0);
            o.dpo.num_pairs = 25.0;
            add(a, o);
        }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " (" << rlpo::preference::to_string(r.o.dpo.terms.front().loss)
                     << ", beta " << r.o.dpo.beta << ", eta " << r.o.eta << ")");
        const auto res = rpo_loss(r.pc, r.pr, r.rc, r.rr, r.o, {}, r.len);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const double grad_err = rlpo_test::max_rel_err(res.grad, ref.out(k, "grad"));
        INFO("gradient: max relative error " << grad_err);
        CHECK(grad_err < tol);
        for (const char* m : {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                              "rewards/margins", "logps/chosen", "logps/rejected"}) {
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(k, m), 1e-9) < tol);
        }
    }
}

TEST_CASE("rpo: properties", "[preference][rpo][properties]") {
    const Pairs p = random_pairs(7, 10, 6.0);
    SECTION("η = 0 (and η < 1e-6, as the authors' trainer) is exactly DPO") {
        for (double eta : {0.0, 9e-7}) {
            RPOOptions o;
            o.eta = eta;
            const auto r = rpo_loss(p.pc, p.pr, p.rc, p.rr, o);
            const auto d = rlpo::preference::dpo_loss(p.pc, p.pr, p.rc, p.rr, o.dpo);
            CHECK(r.value == d.value);
            CHECK(r.grad == d.grad);
        }
    }
    SECTION("the SFT term is −η·β·mean(π_c): closed form and a constant shift of ∂/∂π_c") {
        RPOOptions o;  // β 0.01, η 0.005
        const auto r = rpo_loss(p.pc, p.pr, p.rc, p.rr, o);
        const auto d = rlpo::preference::dpo_loss(p.pc, p.pr, p.rc, p.rr, o.dpo);
        CHECK(r.value == Approx(d.value - 0.005 * 0.01 * p.pc.mean()).epsilon(1e-14));
        for (Index i = 0; i < 10; ++i) {
            CHECK(r.grad(0, i) == Approx(d.grad(0, i) - 0.005 * 0.01 / 10).epsilon(1e-13));
            CHECK(r.grad(1, i) == d.grad(1, i));
        }
        // the DPO part of a tie (h = 0) is log 2 with ∓β/2 per pair: value and gradient exact
        const Vec z = Vec::Zero(4), c = Vec::Constant(4, -3.0);
        const auto t = rpo_loss(c, z, c, z, o);
        CHECK(t.value == Approx(std::log(2.0) + 0.005 * 0.01 * 3.0).epsilon(1e-14));
        CHECK(t.grad(0, 2) == Approx((-0.01 / 2 - 0.005 * 0.01) / 4).epsilon(1e-13));
        CHECK(t.grad(1, 2) == Approx(0.01 / 2 / 4).epsilon(1e-13));
    }
    SECTION("metrics are DPO's (the SFT term does not change them)") {
        const auto r = rpo_loss(p.pc, p.pr, p.rc, p.rr, RPOOptions{});
        const auto d = rlpo::preference::dpo_loss(p.pc, p.pr, p.rc, p.rr, RPOOptions{}.dpo);
        for (const char* m : {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                              "rewards/margins", "logps/chosen", "logps/rejected"})
            CHECK(r.metrics[m] == d.metrics[m]);
        CHECK(r.metrics["rewards/chosen"] ==
              Approx(0.01 * (p.pc - p.rc).mean()).epsilon(1e-13));  // β = 0.01
    }
    SECTION("micro-batches with a global pair count add up to the whole batch") {
        RPOOptions o = options(DPOLoss::Sigmoid, 0.1, 0.5);
        const auto whole = rpo_loss(p.pc, p.pr, p.rc, p.rr, o);
        o.dpo.num_pairs = 10.0;
        rlpo_test::require_example_invariance(whole, 10, [&](Index r0, Index n) {
            return rpo_loss(p.pc.segment(r0, n), p.pr.segment(r0, n), p.rc.segment(r0, n),
                            p.rr.segment(r0, n), o);
        });
    }
    SECTION("GradientOut: write_to, add_to, no_grad; float inputs") {
        const auto own = rpo_loss(p.pc, p.pr, p.rc, p.rr);
        Mat<double> buf = Mat<double>::Constant(2, 10, 7.0);
        const auto w = rpo_loss(p.pc, p.pr, p.rc, p.rr, {}, rlpo::write_to<double>(buf, 2.0));
        CHECK(w.grad.size() == 0);
        CHECK(w.value == Approx(2 * own.value).epsilon(1e-15));
        CHECK(rlpo_test::max_rel_err(buf, Mat<double>(2 * own.grad)) < 1e-15);
        (void)rpo_loss(p.pc, p.pr, p.rc, p.rr, {}, rlpo::add_to<double>(buf, -2.0));
        CHECK(buf.cwiseAbs().maxCoeff() < 1e-15);
        const auto n = rpo_loss(p.pc, p.pr, p.rc, p.rr, {}, rlpo::no_grad<double>());
        CHECK(n.value == own.value);
        const Eigen::VectorXf f = p.pc.cast<float>();
        const auto fr = rpo_loss(f, p.pr.cast<float>(), p.rc.cast<float>(), p.rr.cast<float>());
        CHECK(fr.value == Approx(own.value).epsilon(1e-4));
    }
    SECTION("B = 0: value 0, empty gradient, metrics 0") {
        const Vec e(0);
        const auto r = rpo_loss(e, e, e, e);
        CHECK(r.value == 0.0);
        CHECK(r.grad.size() == 0);
        CHECK(r.metrics["rewards/accuracies"] == 0.0);
    }
}

TEST_CASE("rpo: bad input gives the documented error", "[preference][rpo][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, y, x, x),
                                    "preference::rpo_loss(): policy_rejected_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 4");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, y, x), "ref_chosen_logps: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, y), "ref_rejected_logps: expected 3 entries");
    const Mat<double> m = Mat<double>::Zero(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(m, x, x, x), "policy_chosen_logps: expected a vector");
    Vec bad = x;
    bad(1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(bad, x, x, x),
                                    "preference::rpo_loss(): policy_chosen_logps: NaN at pair 1");
    bad(1) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, bad, x),
                                    "ref_chosen_logps: non-finite value inf at pair 1");
    RPOOptions o;
    o.eta = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o),
                                    "preference::rpo_loss(): eta: must be >= 0, given -0.1");
    o.eta = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o), "eta: must be >= 0");
    o = {};
    o.dpo.beta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o),
                                    "preference::rpo_loss(): beta: must be > 0, given 0");
    o = {};
    o.dpo.label_smoothing = 0.7;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o),
                                    "label_smoothing: must be in [0, 0.5]");
    o = {};
    o.dpo.num_pairs = -1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o), "num_pairs: must be > 0");
    o = options(DPOLoss::IPO, 0.1, 0.005);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o),
                                    "averages the log-ratios over the completion lengths");
    CompletionLengths neg{-Vec::Ones(3), Vec::Ones(3)}, short_len{Vec::Ones(3), Vec::Ones(2)};
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o, {}, neg),
                                    "preference::rpo_loss(): lengths: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rpo_loss(x, x, x, x, o, {}, short_len),
                                    "lengths.rejected: expected 3 entries");
}
