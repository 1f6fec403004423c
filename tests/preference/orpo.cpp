// ORPO (TRL ORPOTrainer: odds ratio + NLL), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/orpo.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::CompletionLengths;
using rlpo::preference::orpo_loss;
using rlpo::preference::ORPOOptions;
using Vec = Eigen::VectorXd;

/// B pairs of summed completion log-probs with per-token means in (−lo, −hi) and lengths.
struct Pairs {
    Vec pc, pr;
    CompletionLengths len;
};
Pairs random_pairs(std::uint64_t seed, Index B, double lo = 2.5, double hi = 0.02) {
    rlpo::testing::Generator gen(seed);
    Pairs p;
    p.pc.resize(B);
    p.pr.resize(B);
    p.len.chosen.resize(B);
    p.len.rejected.resize(B);
    for (Index i = 0; i < B; ++i) {
        p.len.chosen(i) = std::floor(gen.uniform(1.0, 40.0));
        p.len.rejected(i) = std::floor(gen.uniform(1.0, 40.0));
        p.pc(i) = -p.len.chosen(i) * gen.uniform(hi, lo);
        p.pr(i) = -p.len.rejected(i) * gen.uniform(hi, lo);
    }
    return p;
}

Mat<double> stacked(const Pairs& p) {
    Mat<double> x(2, p.pc.size());
    x.row(0) = p.pc.transpose();
    x.row(1) = p.pr.transpose();
    return x;
}

double value_at(const Mat<double>& x, const Pairs& p, const ORPOOptions& o) {
    const Vec c = x.row(0).transpose(), r = x.row(1).transpose();
    return orpo_loss(c, r, p.len, o, rlpo::no_grad<double>()).value;
}

}  // namespace

TEST_CASE("orpo: gradient equals central finite differences", "[preference][orpo][fd]") {
    std::uint64_t seed = 10;
    for (double beta : {0.1, 1.0})
        for (bool nll : {true, false})
            for (double lo : {2.5, 0.3}) {  // 0.3: averages near 0, where log(1 − e^ā) is steep
                INFO("beta " << beta << " nll " << nll << " lo " << lo);
                const Pairs p = random_pairs(seed++, 9, lo, 0.05);
                ORPOOptions o;
                o.beta = beta;
                o.compute_nll = nll;
                const auto r = orpo_loss(p.pc, p.pr, p.len, o);
                REQUIRE(r.grad.rows() == 2);
                REQUIRE(r.grad.cols() == 9);
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) { return value_at(x, p, o); }, stacked(p), r.grad,
                    1e-6, 1e-9);
            }
    SECTION("global pair and token counts") {
        const Pairs p = random_pairs(99, 8);
        ORPOOptions o;
        o.num_pairs = 20.0;
        o.num_nll_tokens = 400.0;
        const auto r = orpo_loss(p.pc, p.pr, p.len, o);
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return value_at(x, p, o); },
                                       stacked(p), r.grad);
    }
}

TEMPLATE_TEST_CASE("orpo: agrees with the PyTorch autograd reference (TRL's formulas)",
                   "[preference][orpo][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_reffree",
                                  std::string("orpo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr;
        CompletionLengths len;
        ORPOOptions o;
    };
    std::vector<Run> runs;
    const auto add = [&](const Pairs& p, const ORPOOptions& o) {
        Run r{p.pc.cast<S>(), p.pr.cast<S>(), p.len, o};
        auto& c = ref.add<S>("orpo");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("len_chosen", Mat<double>(p.len.chosen))
            .in("len_rejected", Mat<double>(p.len.rejected));
        c.p("beta", o.beta).p("compute_nll", o.compute_nll ? 1.0 : 0.0);
        if (o.num_pairs) c.p("num_pairs", *o.num_pairs);
        if (o.num_nll_tokens) c.p("num_nll_tokens", *o.num_nll_tokens);
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 500;
    for (double beta : {0.1, 0.5, 2.0}) {
        ORPOOptions o;
        o.beta = beta;
        add(random_pairs(seed++, 11), o);
        // adversarial: averages on both sides of TRL's split at −log 2, down to −1e-6 (p → 1,
        // steep odds) and −30 (p → 0), equal averages (z = 0)
        Pairs a = random_pairs(seed++, 11, 0.9, 0.5);
        a.pc(0) = -1e-6 * a.len.chosen(0);
        a.pr(1) = -1e-5 * a.len.rejected(1);
        a.pc(2) = -30.0 * a.len.chosen(2);
        a.pc(3) = -std::log(2.0) * a.len.chosen(3);
        a.pr(4) = a.pc(4) / a.len.chosen(4) * a.len.rejected(4);
        o.compute_nll = beta != 0.5;
        add(a, o);
    }
    {
        ORPOOptions o;
        o.num_pairs = 30.0;
        o.num_nll_tokens = 700.0;
        add(random_pairs(seed++, 9), o);
    }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " (beta " << r.o.beta << ")");
        const auto res = orpo_loss(r.pc, r.pr, r.len, r.o);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const double grad_err = rlpo_test::max_rel_err(res.grad, ref.out(k, "grad"));
        INFO("gradient: max relative error " << grad_err << "\nrlpo\n"
                                             << res.grad << "\ntorch\n"
                                             << ref.out(k, "grad"));
        CHECK(grad_err < tol);
        for (const char* m :
             {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"}) {
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(k, m), 1e-9) < tol);
        }
    }
}

TEST_CASE("orpo: properties", "[preference][orpo][properties]") {
    const Pairs p = random_pairs(7, 10);
    const double tokens = p.len.chosen.sum();
    SECTION("closed form: odds ratio from probabilities, NLL = −Σπ_c/N") {
        ORPOOptions o;
        o.beta = 0.3;
        const auto r = orpo_loss(p.pc, p.pr, p.len, o);
        double ls = 0, z_sum = 0;
        for (Index i = 0; i < 10; ++i) {
            const double P = std::exp(p.pc(i) / p.len.chosen(i));
            const double Q = std::exp(p.pr(i) / p.len.rejected(i));
            const double z = std::log((P / (1 - P)) / (Q / (1 - Q)));
            ls += -std::log1p(std::exp(-z));
            z_sum += z;
        }
        const double nll = -p.pc.sum() / tokens;
        CHECK(r.value == Approx(nll - 0.3 * ls / 10).epsilon(1e-12));
        CHECK(r.metrics["log_odds_ratio"] == Approx(ls / 10).epsilon(1e-12));
        CHECK(r.metrics["log_odds_chosen"] == Approx(z_sum / 10).epsilon(1e-12));
        CHECK(r.metrics["nll_loss"] == Approx(nll).epsilon(1e-13));
        // without the NLL: the odds-ratio term alone; the NLL's gradient is −1/N per chosen sum
        o.compute_nll = false;
        const auto q = orpo_loss(p.pc, p.pr, p.len, o);
        CHECK(q.value == Approx(-0.3 * ls / 10).epsilon(1e-12));
        for (Index i = 0; i < 10; ++i) {
            CHECK(r.grad(0, i) == Approx(q.grad(0, i) - 1 / tokens).epsilon(1e-13));
            CHECK(r.grad(1, i) == q.grad(1, i));
        }
    }
    SECTION("equal averages: z = 0, logσ(0) = −log 2; swapping chosen and rejected negates z") {
        Vec c(2), rj(2);
        c << -6.0, -2.0;
        rj << -9.0, -3.0;
        const CompletionLengths len{Vec::Constant(2, 2.0), Vec::Constant(2, 3.0)};
        ORPOOptions o;
        o.compute_nll = false;
        const auto r = orpo_loss(c, rj, len, o);
        CHECK(r.metrics["log_odds_chosen"] == Approx(0.0).margin(1e-15));
        CHECK(r.value == Approx(0.1 * std::log(2.0)).epsilon(1e-14));
        CHECK(r.metrics["rewards/accuracies"] == 0.0);
        const auto s = orpo_loss(p.pr, p.pc, CompletionLengths{p.len.rejected, p.len.chosen}, o);
        const auto t = orpo_loss(p.pc, p.pr, p.len, o);
        CHECK(s.metrics["log_odds_chosen"] == Approx(-t.metrics["log_odds_chosen"]).epsilon(1e-13));
    }
    SECTION("near ā → 0⁻: log(1 − e^ā) keeps full precision (log(−ā) + ā/2 to first order)") {
        Vec c(1), rj(1);
        c << -1e-12;
        rj << -1.0;
        const CompletionLengths one{Vec::Ones(1), Vec::Ones(1)};
        ORPOOptions o;
        o.compute_nll = false;
        const auto r = orpo_loss(c, rj, one, o);
        // z = (ā_c − ā_r) − (log(−expm1(ā_c)) − log(1 − e^{−1}))
        const double z =
            (-1e-12 + 1.0) - (std::log(1e-12 - 0.5e-24) - std::log(1 - std::exp(-1.0)));
        CHECK(r.metrics["log_odds_chosen"] == Approx(z).epsilon(1e-13));
        CHECK(std::isfinite(r.grad(0, 0)));
        // ∂z/∂ā_c = −1/expm1(ā_c) ≈ 1e12
        CHECK(r.grad(0, 0) == Approx(-0.1 * (1 / (1 + std::exp(z))) * 1e12).epsilon(1e-6));
    }
    SECTION("micro-batches with global counts add up to the whole batch; metrics merge") {
        ORPOOptions o;
        const auto whole = orpo_loss(p.pc, p.pr, p.len, o);
        o.num_pairs = 10.0;
        o.num_nll_tokens = tokens;
        rlpo_test::require_example_invariance(
            whole, 10,
            [&](Index r0, Index n) {
                const CompletionLengths len{p.len.chosen.segment(r0, n),
                                            p.len.rejected.segment(r0, n)};
                return orpo_loss(p.pc.segment(r0, n), p.pr.segment(r0, n), len, o);
            },
            {1e-13, {"nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/margins"}});
    }
    SECTION("TRL decoder-only NLL over prompt + completion: caller adds the prompt part") {
        // prompt tokens: 5 per pair with summed log-prob −4 each
        const double prompt_tokens = 50, prompt_sum = -40;
        ORPOOptions o;
        o.num_nll_tokens = tokens + prompt_tokens;
        const auto r = orpo_loss(p.pc, p.pr, p.len, o);
        const double total = r.value - prompt_sum / (tokens + prompt_tokens);
        o = {};
        o.compute_nll = false;
        const auto q = orpo_loss(p.pc, p.pr, p.len, o);
        const double expected = -(p.pc.sum() + prompt_sum) / (tokens + prompt_tokens) + q.value;
        CHECK(total == Approx(expected).epsilon(1e-13));
    }
    SECTION("GradientOut and degenerate data") {
        const auto own = orpo_loss(p.pc, p.pr, p.len);
        Mat<double> buf = Mat<double>::Constant(2, 10, 5.0);
        const auto w = orpo_loss(p.pc, p.pr, p.len, {}, rlpo::write_to<double>(buf, -1.0));
        CHECK(w.value == Approx(-own.value).epsilon(1e-15));
        CHECK(rlpo_test::max_rel_err(buf, Mat<double>(-own.grad)) < 1e-15);
        const Vec e(0);
        const auto z = orpo_loss(e, e, CompletionLengths{e, e});
        CHECK(z.value == 0.0);
        CHECK(z.grad.size() == 0);
        CHECK(z.metrics["log_odds_ratio"] == 0.0);
        // every chosen completion empty: NLL 0 (TRL: NaN); lengths clamp to 1 in the averages
        Vec c = Vec::Constant(2, -0.5), q = Vec::Constant(2, -3.0);
        const auto s = orpo_loss(c, q, CompletionLengths{Vec::Zero(2), Vec::Ones(2)});
        CHECK(std::isfinite(s.value));
        CHECK(s.metrics["nll_loss"] == 0.0);
    }
}

TEST_CASE("orpo: an averaged log-prob just below 0 gives the finite limit of the gradient",
          "[preference][orpo][properties]") {
    // ā_c = −1e-310: 1/(1 − e^ā_c) ≈ 1e310 overflows a double while σ(−z) ≈ e^{−z} underflows;
    // their product is finite. With z ≈ (ā_c − ā_r) − log(−ā_c) + log(1 − e^ā_r) large,
    // ∂L/∂π_c = −β·σ(−z)/(1 − e^ā_c) → −β·e^{ā_r − ā_c}/(1 − e^ā_r) (closed form, |y| = 1, n = 1).
    const double ac = -1e-310, ar = -5.0, beta = 0.1;
    Vec c(1), rj(1);
    c << ac;
    rj << ar;
    ORPOOptions o;
    o.beta = beta;
    o.compute_nll = false;
    const auto r = orpo_loss(c, rj, CompletionLengths{Vec::Ones(1), Vec::Ones(1)}, o);
    const double expect = -beta * std::exp(ar - ac) / -std::expm1(ar);
    CHECK(r.grad(0, 0) == Approx(expect).epsilon(1e-12));
    CHECK(std::isfinite(r.grad(1, 0)));
    CHECK(r.grad(1, 0) >= 0.0);
    CHECK(r.grad(1, 0) < 1e-300);
    CHECK(std::isfinite(r.value));
    // β large enough that the true gradient overflows: a numerical_error, never inf
    o.beta = 1e300;
    c << -1e-300;
    rj << -1e-300;
    RLPO_REQUIRE_NUMERICAL_ERROR(orpo_loss(c, rj, CompletionLengths{Vec::Ones(1), Vec::Ones(1)}, o),
                                 "");
}

TEST_CASE("orpo: bad input gives the documented error", "[preference][orpo][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    const CompletionLengths len{Vec::Ones(3), Vec::Ones(3)};
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, y, len),
                                    "preference::orpo_loss(): policy_rejected_logps: expected 3 "
                                    "entries (same as policy_chosen_logps), given 4");
    const Mat<double> m = Mat<double>::Zero(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(m, x, len), "policy_chosen_logps: expected a vector");
    Vec bad = x;
    bad(1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, bad, len), "policy_rejected_logps: NaN at pair 1");
    bad(1) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(bad, x, len),
                                    "policy_chosen_logps: non-finite value -inf at pair 1");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, x, CompletionLengths{Vec::Ones(3), Vec::Ones(2)}),
                                    "lengths.rejected: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, x, CompletionLengths{-Vec::Ones(3), Vec::Ones(3)}),
                                    "lengths: must be >= 0");
    Vec zero = x, pos = x;
    zero(2) = 0.0;
    pos(0) = 1e-3;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(zero, x, len),
                                    "preference::orpo_loss(): policy_chosen_logps: the "
                                    "length-averaged log-prob must be < 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, pos, len),
                                    "policy_rejected_logps: the length-averaged log-prob must be < "
                                    "0 (odds need a probability < 1), given 0.001 at pair 0");
    ORPOOptions o;
    o.beta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, x, len, o), "beta: must be > 0, given 0");
    o.beta = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, x, len, o), "beta: must be > 0");
    o = {};
    o.num_pairs = -1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, x, len, o), "num_pairs: must be > 0");
    o = {};
    o.num_nll_tokens = -2.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, x, len, o), "num_nll_tokens: must be >= 0");
    o.num_nll_tokens = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(orpo_loss(x, x, len, o), "num_nll_tokens: must be >= 0");
}
