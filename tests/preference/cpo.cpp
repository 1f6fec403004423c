// CPO / SimPO / AlphaPO (TRL CPOTrainer loss types + the cpo_alpha NLL), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/cpo.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::CompletionLengths;
using rlpo::preference::cpo_loss;
using rlpo::preference::CPOLoss;
using rlpo::preference::CPOOptions;
using Vec = Eigen::VectorXd;

const std::vector<CPOLoss>& all_losses() {
    static const std::vector<CPOLoss> v{CPOLoss::Sigmoid, CPOLoss::Hinge, CPOLoss::IPO,
                                        CPOLoss::SimPO};
    return v;
}

/// B pairs of summed completion log-probs (−|y|·U(0.05, 2.5) per token) and their lengths.
struct Pairs {
    Vec pc, pr;
    CompletionLengths len;
};
Pairs random_pairs(std::uint64_t seed, Index B, Index max_len = 40) {
    rlpo::testing::Generator gen(seed);
    Pairs p;
    p.pc.resize(B);
    p.pr.resize(B);
    p.len.chosen.resize(B);
    p.len.rejected.resize(B);
    for (Index i = 0; i < B; ++i) {
        p.len.chosen(i) = std::floor(gen.uniform(1.0, static_cast<double>(max_len)));
        p.len.rejected(i) = std::floor(gen.uniform(1.0, static_cast<double>(max_len)));
        p.pc(i) = -p.len.chosen(i) * gen.uniform(0.05, 2.5);
        p.pr(i) = -p.len.rejected(i) * gen.uniform(0.05, 2.5);
    }
    return p;
}

CPOOptions options_for(CPOLoss l, double beta, double alpha = 0.0) {
    CPOOptions o;
    o.loss = l;
    o.beta = beta;
    o.label_smoothing = 0.1;  // read by sigmoid and simpo
    o.simpo_gamma = 0.3;
    o.alpha = alpha;
    return o;
}

Mat<double> stacked(const Pairs& p) {
    Mat<double> x(2, p.pc.size());
    x.row(0) = p.pc.transpose();
    x.row(1) = p.pr.transpose();
    return x;
}

double value_at(const Mat<double>& x, const Pairs& p, const CPOOptions& o) {
    const Vec c = x.row(0).transpose(), r = x.row(1).transpose();
    return cpo_loss(c, r, o, rlpo::no_grad<double>(), p.len).value;
}

bool averages(CPOLoss l) { return l == CPOLoss::IPO || l == CPOLoss::SimPO; }

/// The reward margin m = r_c − r_r of pair i (TRL's `logits`), for skipping hinge's kink.
double margin(const Pairs& p, const CPOOptions& o, Index i) {
    const double xc = averages(o.loss) ? p.pc(i) / p.len.chosen(i) : p.pc(i);
    const double xr = averages(o.loss) ? p.pr(i) / p.len.rejected(i) : p.pr(i);
    const auto r = [&](double x) {
        return o.alpha == 0 ? x : (1 - std::exp(-o.alpha * x)) / o.alpha;
    };
    return r(xc) - r(xr);
}

}  // namespace

TEST_CASE("cpo: gradient equals central finite differences", "[preference][cpo][fd]") {
    std::uint64_t seed = 10;
    for (CPOLoss l : all_losses())
        for (double beta : {0.1, 0.5})
            for (double alpha : {0.0, 0.25, -0.5})
                for (double cpo_alpha : {0.0, 1.0}) {
                    INFO(rlpo::preference::to_string(l)
                         << " beta " << beta << " alpha " << alpha << " cpo_alpha " << cpo_alpha);
                    // AlphaPO on summed log-probs: keep e^{−α·x} moderate
                    const Pairs p = random_pairs(seed++, 9, averages(l) || alpha == 0 ? 40 : 8);
                    CPOOptions o = options_for(l, beta, alpha);
                    o.cpo_alpha = cpo_alpha;
                    const auto r = cpo_loss(p.pc, p.pr, o, {}, p.len);
                    REQUIRE(r.grad.rows() == 2);
                    REQUIRE(r.grad.cols() == 9);
                    const auto skip = [&](Index k) {
                        return l == CPOLoss::Hinge &&
                               std::abs(beta * margin(p, o, k % 9) - 1) < 1e-3;
                    };
                    rlpo_test::require_fd_gradient(
                        [&](const Mat<double>& x) { return value_at(x, p, o); }, stacked(p), r.grad,
                        1e-6, 1e-9, skip);
                }
    SECTION("global pair and token counts") {
        const Pairs p = random_pairs(99, 8);
        CPOOptions o = options_for(CPOLoss::SimPO, 0.4, 0.1);
        o.num_pairs = 20.0;
        o.num_nll_tokens = 300.0;
        const auto r = cpo_loss(p.pc, p.pr, o, {}, p.len);
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return value_at(x, p, o); },
                                       stacked(p), r.grad);
    }
}

TEMPLATE_TEST_CASE("cpo: agrees with the PyTorch autograd reference (TRL's formulas)",
                   "[preference][cpo][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_reffree",
                                  std::string("cpo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr;
        CompletionLengths len;
        CPOOptions o;
    };
    std::vector<Run> runs;
    const auto add = [&](const Pairs& p, const CPOOptions& o) {
        Run r{p.pc.cast<S>(), p.pr.cast<S>(), p.len, o};
        auto& c = ref.add<S>("cpo");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("len_chosen", Mat<double>(p.len.chosen))
            .in("len_rejected", Mat<double>(p.len.rejected));
        c.p("beta", o.beta)
            .p("label_smoothing", o.label_smoothing)
            .p("cpo_alpha", o.cpo_alpha)
            .p("simpo_gamma", o.simpo_gamma)
            .p("alpha", o.alpha);
        if (o.num_pairs) c.p("num_pairs", *o.num_pairs);
        if (o.num_nll_tokens) c.p("num_nll_tokens", *o.num_nll_tokens);
        c.s("loss_type", rlpo::preference::to_string(o.loss));
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 500;
    for (CPOLoss l : all_losses())
        for (double beta : {0.1, 0.7})
            for (double alpha : {0.0, 0.25, -1.0}) {
                CPOOptions o = options_for(l, beta, alpha);
                add(random_pairs(seed++, 11, averages(l) || alpha == 0 ? 40 : 6), o);
                // adversarial: equal log-probs (m = 0), a margin of 1e-9; without α also
                // one-token completions of long sums (averages down to −1000) and saturated
                // sigmoids (|βm| ~ 100 with summed log-probs). With α ≠ 0 TRL's exp(x)^{−α}
                // overflows there (NaN; rlpo's form is finite, tested in the properties).
                Pairs a = random_pairs(seed++, 11, alpha == 0 ? 400 : (averages(l) ? 40 : 6));
                a.pc(0) = a.pr(0);
                a.len.chosen(0) = a.len.rejected(0);
                a.pc(1) = a.pr(1) + 1e-9;
                a.len.chosen(1) = a.len.rejected(1);
                if (alpha == 0) {
                    a.len.chosen(2) = 1;
                    a.len.rejected(3) = 1;
                }
                o.label_smoothing = 0.0;
                o.cpo_alpha = 0.5;
                add(a, o);
            }
    {  // TRL's alphapo preset, and global counts
        CPOOptions o = rlpo::preference::make_cpo_options("alphapo");
        o.alpha = 0.3;
        o.beta = 2.0;
        add(random_pairs(seed++, 9), o);
        o = CPOOptions::trl();
        o.num_pairs = 25.0;
        o.num_nll_tokens = 500.0;
        add(random_pairs(seed++, 9), o);
    }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " (" << rlpo::preference::to_string(r.o.loss) << ", beta " << r.o.beta
                     << ", alpha " << r.o.alpha << ")");
        const auto res = cpo_loss(r.pc, r.pr, r.o, {}, r.len);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const double grad_err = rlpo_test::max_rel_err(res.grad, ref.out(k, "grad"));
        INFO("gradient: max relative error " << grad_err << "\nrlpo\n"
                                             << res.grad << "\ntorch\n"
                                             << ref.out(k, "grad"));
        CHECK(grad_err < tol);
        for (const char* m : {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                              "rewards/margins", "logps/chosen", "logps/rejected"}) {
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(k, m), 1e-9) < tol);
        }
        if (!r.o.num_nll_tokens)
            CHECK(rlpo_test::rel_err(res.metrics["nll_loss"], ref.scalar(k, "nll_loss"), 1e-9) <
                  tol);
    }
}

TEST_CASE("cpo: properties", "[preference][cpo][properties]") {
    const Pairs p = random_pairs(7, 10);
    const double tokens = p.len.chosen.sum();
    SECTION("sigmoid, ε = 0, no NLL: −log σ(β(π_c − π_r)), gradient ∓β σ(−βm)/B") {
        CPOOptions o;
        o.beta = 0.2;
        o.cpo_alpha = 0.0;
        const auto r = cpo_loss(p.pc, p.pr, o);  // no lengths needed
        double v = 0;
        for (Index i = 0; i < 10; ++i) {
            const double h = 0.2 * (p.pc(i) - p.pr(i));
            v += std::log1p(std::exp(-h)) / 10;
            const double g = -0.2 / (1 + std::exp(h)) / 10;
            CHECK(r.grad(0, i) == Approx(g).epsilon(1e-13));
            CHECK(r.grad(1, i) == Approx(-g).epsilon(1e-13));
        }
        CHECK(r.value == Approx(v).epsilon(1e-13));
        CHECK(r.metrics["nll_loss"] == 0.0);  // TRL logs 0 when cpo_alpha = 0
    }
    SECTION("the NLL term: λ·(−Σπ_c / Σ|y_c|), gradient −λ/N on every chosen entry") {
        CPOOptions o;
        o.cpo_alpha = 0.0;
        const auto base = cpo_loss(p.pc, p.pr, o, {}, p.len);
        o.cpo_alpha = 2.5;
        const auto r = cpo_loss(p.pc, p.pr, o, {}, p.len);
        const double nll = -p.pc.sum() / tokens;
        CHECK(r.value == Approx(base.value + 2.5 * nll).epsilon(1e-13));
        CHECK(r.metrics["nll_loss"] == Approx(nll).epsilon(1e-13));
        for (Index i = 0; i < 10; ++i) {
            CHECK(r.grad(0, i) == Approx(base.grad(0, i) - 2.5 / tokens).epsilon(1e-13));
            CHECK(r.grad(1, i) == base.grad(1, i));
        }
        o.num_nll_tokens = tokens;  // the same count given explicitly: no lengths needed
        o.loss = CPOLoss::Sigmoid;
        const auto t = cpo_loss(p.pc, p.pr, o);
        CHECK(t.value == Approx(r.value).epsilon(1e-14));
    }
    SECTION("simpo with γ = 0 is sigmoid on the length-averaged log-probs; γ shifts the margin") {
        CPOOptions s = CPOOptions::simpo(0.5, 0.0);
        const auto r = cpo_loss(p.pc, p.pr, s, {}, p.len);
        Vec ac(10), ar(10);
        for (Index i = 0; i < 10; ++i) {
            ac(i) = p.pc(i) / p.len.chosen(i);
            ar(i) = p.pr(i) / p.len.rejected(i);
        }
        CPOOptions g;
        g.beta = 0.5;
        g.cpo_alpha = 0.0;
        const auto q = cpo_loss(ac, ar, g);
        CHECK(r.value == Approx(q.value).epsilon(1e-13));
        for (Index i = 0; i < 10; ++i)
            CHECK(r.grad(0, i) == Approx(q.grad(0, i) / p.len.chosen(i)).epsilon(1e-12));
        CHECK(r.metrics["logps/chosen"] == Approx(ac.mean()).epsilon(1e-13));
        // γ: −logσ(βm − γ) at a pair with βm = γ is log 2
        Vec c(1), rj(1);
        c << -2.0;
        rj << -3.0;
        const CompletionLengths one{Vec::Ones(1), Vec::Ones(1)};
        const auto z = cpo_loss(c, rj, CPOOptions::simpo(0.5, 0.5), {}, one);
        CHECK(z.value == Approx(std::log(2.0)).epsilon(1e-14));
    }
    SECTION("IPO's minimiser: averaged margin 1/(2β) gives value 0 and gradient 0") {
        const double beta = 0.25;
        Vec pc = p.pc;
        for (Index i = 0; i < 10; ++i)
            pc(i) = p.len.chosen(i) * (p.pr(i) / p.len.rejected(i) + 2.0);  // m = 1/(2β) = 2
        CPOOptions o;
        o.loss = CPOLoss::IPO;
        o.beta = beta;
        o.cpo_alpha = 0.0;
        const auto r = cpo_loss(pc, p.pr, o, {}, p.len);
        CHECK(r.value == Approx(0.0).margin(1e-24));
        CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-12);
    }
    SECTION("AlphaPO: α → 0 recovers the log-prob reward; r = (1 − p^{−α})/α closed form") {
        CPOOptions o = options_for(CPOLoss::SimPO, 0.3, 0.0);
        const auto zero = cpo_loss(p.pc, p.pr, o, {}, p.len);
        o.alpha = 1e-9;
        const auto tiny = cpo_loss(p.pc, p.pr, o, {}, p.len);
        CHECK(tiny.value == Approx(zero.value).epsilon(1e-7));
        CHECK(rlpo_test::max_rel_err(tiny.grad, zero.grad) < 1e-6);
        o.alpha = 0.5;
        const auto a = cpo_loss(p.pc, p.pr, o, {}, p.len);
        double rc = 0;
        for (Index i = 0; i < 10; ++i)
            rc += 0.3 * (1 - std::pow(std::exp(p.pc(i) / p.len.chosen(i)), -0.5)) / 0.5 / 10;
        CHECK(a.metrics["rewards/chosen"] == Approx(rc).epsilon(1e-12));
        // the alphapo preset is TRL's: simpo, no NLL
        const CPOOptions t = rlpo::preference::make_cpo_options("alphapo");
        CHECK(t.loss == CPOLoss::SimPO);
        CHECK(t.cpo_alpha == 0.0);
        CHECK(CPOOptions::alphapo(0.25).alpha == 0.25);
    }
    SECTION("AlphaPO stays finite where TRL's exp(x)^{−α} overflows (x < −745)") {
        Vec c(1), r(1);
        c << -800.0;
        r << -900.0;
        CPOOptions o;
        o.alpha = -0.5;  // r(x) = (1 − e^{0.5x})/(−0.5) → −2
        o.cpo_alpha = 0.0;
        const auto v = cpo_loss(c, r, o);
        CHECK(std::isfinite(v.value));
        CHECK(v.metrics["rewards/chosen"] == Approx(0.1 * -2.0).epsilon(1e-12));
    }
    SECTION("symmetric pairs: accuracy 0.5, margin 0") {
        Vec pc(2), pr(2);
        pc << -10, -12;
        pr << -12, -10;
        const CompletionLengths len{Vec::Constant(2, 4.0), Vec::Constant(2, 4.0)};
        for (CPOLoss l : all_losses())
            for (double alpha : {0.0, 0.3}) {
                INFO(rlpo::preference::to_string(l) << " alpha " << alpha);
                const auto r = cpo_loss(pc, pr, options_for(l, 0.1, alpha), {}, len);
                CHECK(r.metrics["rewards/accuracies"] == 0.5);
                CHECK(r.metrics["rewards/margins"] == Approx(0.0).margin(1e-15));
            }
    }
    SECTION("micro-batches with global counts add up to the whole batch; metrics merge") {
        for (CPOLoss l : all_losses()) {
            INFO(rlpo::preference::to_string(l));
            CPOOptions o = options_for(l, 0.3, 0.2);
            const auto whole = cpo_loss(p.pc, p.pr, o, {}, p.len);
            o.num_pairs = 10.0;
            o.num_nll_tokens = tokens;
            rlpo_test::require_example_invariance(
                whole, 10,
                [&](Index r0, Index n) {
                    const CompletionLengths len{p.len.chosen.segment(r0, n),
                                                p.len.rejected.segment(r0, n)};
                    return cpo_loss(p.pc.segment(r0, n), p.pr.segment(r0, n), o, {}, len);
                },
                {1e-13, {"nll_loss", "rewards/margins"}});
        }
    }
    SECTION("GradientOut: add_to TRL's concatenated [2B] buffer; no_grad") {
        const auto own = cpo_loss(p.pc, p.pr, {}, {}, p.len);
        std::vector<double> buf(20, 0.0);
        auto view = rlpo::view(buf.data(), 2, 10);
        const auto w = cpo_loss(p.pc, p.pr, {}, rlpo::add_to<double>(view, 3.0), p.len);
        CHECK(w.value == Approx(3 * own.value).epsilon(1e-15));
        for (Index i = 0; i < 10; ++i) {
            CHECK(buf[static_cast<std::size_t>(i)] == Approx(3 * own.grad(0, i)));
            CHECK(buf[static_cast<std::size_t>(10 + i)] == Approx(3 * own.grad(1, i)));
        }
        const auto n = cpo_loss(p.pc, p.pr, {}, rlpo::no_grad<double>(), p.len);
        CHECK(n.value == own.value);
        CHECK(n.grad.size() == 0);
    }
    SECTION("degenerate: B = 0; every chosen completion empty gives NLL 0") {
        const Vec e(0);
        const auto r = cpo_loss(e, e, {}, {}, CompletionLengths{e, e});
        CHECK(r.value == 0.0);
        CHECK(r.grad.size() == 0);
        CHECK(r.metrics["rewards/accuracies"] == 0.0);
        Vec z = Vec::Zero(2), q = Vec::Constant(2, -3.0);
        const CompletionLengths len{Vec::Zero(2), Vec::Ones(2)};
        const auto s = cpo_loss(z, q, {}, {}, len);
        CHECK(std::isfinite(s.value));
        CHECK(s.metrics["nll_loss"] == 0.0);
        // averaged with |y_c| = 0 clamped to 1 (TRL: 0/0)
        const auto t = cpo_loss(z, q, CPOOptions::simpo(), {}, len);
        CHECK(std::isfinite(t.value));
    }
    SECTION("names: TRL's loss types parse and print") {
        for (CPOLoss l : all_losses())
            CHECK(rlpo::preference::parse_cpo_loss(rlpo::preference::to_string(l)) == l);
        CHECK(rlpo::preference::make_cpo_options("ipo").loss == CPOLoss::IPO);
        CHECK(rlpo::preference::make_cpo_options("ipo").cpo_alpha == 1.0);
    }
}

TEST_CASE("cpo: bad input gives the documented error", "[preference][cpo][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    const CompletionLengths len{Vec::Ones(3), Vec::Ones(3)};
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, y, {}, {}, len),
                                    "preference::cpo_loss(): policy_rejected_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 4");
    const Mat<double> m = Mat<double>::Zero(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(m, x, {}, {}, len),
                                    "policy_chosen_logps: expected a vector");
    Vec bad = x;
    bad(2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, bad, {}, {}, len),
                                    "policy_rejected_logps: NaN at pair 2");
    bad(2) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(bad, x, {}, {}, len),
                                    "policy_chosen_logps: non-finite value -inf at pair 2");
    CPOOptions o;
    o.beta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len),
                                    "preference::cpo_loss(): beta: must be > 0, given 0");
    o = {};
    o.label_smoothing = 0.7;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len),
                                    "label_smoothing: must be in [0, 0.5], given 0.7");
    const double inf = std::numeric_limits<double>::infinity();
    o = {};
    o.simpo_gamma = inf;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len), "simpo_gamma: must be finite");
    o = {};
    o.alpha = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len), "alpha: must be finite");
    o = {};
    o.cpo_alpha = inf;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len), "cpo_alpha: must be finite");
    o = {};
    o.num_pairs = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len), "num_pairs: must be > 0");
    o = {};
    o.num_nll_tokens = -1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len), "num_nll_tokens: must be >= 0");
    o.num_nll_tokens = inf;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o, {}, len), "num_nll_tokens: must be >= 0");
    // lengths missing where needed
    for (CPOLoss l : {CPOLoss::IPO, CPOLoss::SimPO}) {
        o = {};
        o.loss = l;
        o.cpo_alpha = 0.0;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, o),
                                        "averages the log-probs over the completion lengths");
    }
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x), "the NLL term (cpo_alpha = 1) is a mean");
    CompletionLengths short_len{Vec::Ones(3), Vec::Ones(2)}, negative{-Vec::Ones(3), Vec::Ones(3)};
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, {}, {}, short_len),
                                    "lengths.rejected: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(cpo_loss(x, x, {}, {}, negative), "lengths: must be >= 0");
    // AlphaPO overflow: e^{−α·x} = e^{800}
    o = {};
    o.alpha = 2.0;
    Vec big = Vec::Constant(3, -400.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        cpo_loss(big, x, o, {}, len),
        "alpha: the AlphaPO reward (1 − e^{−α·x})/α overflows at pair 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::preference::parse_cpo_loss("orpo"),
        "preference::parse_cpo_loss(): name: unknown CPO loss type 'orpo'; valid names: sigmoid, "
        "hinge, ipo, simpo");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::preference::make_cpo_options("kto_pair"),
                                    "unknown CPO loss type 'kto_pair'");
}
