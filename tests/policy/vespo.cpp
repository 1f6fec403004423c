// VESPO (TRL loss_type "vespo": Gamma-weighted sequence importance ratio), four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/policy_loss.hpp>
#include <rlpo/policy/reinforce.hpp>
#include <rlpo/policy/vespo.hpp>

using namespace policy_test;
using rlpo::policy::VESPOOptions;

namespace {
std::vector<VESPOOptions> option_sets() {
    VESPOOptions flat = VESPOOptions::trl(0.5, 0.2, 1.0, 0.0);   // λ₋ = 0: TRL's 1e-4 floor
    VESPOOptions steep = VESPOOptions::trl(4.0, 6.0, 0.0, 5.0);  // k₋ = 0: decay only
    return {VESPOOptions::trl(), flat, steep};
}
const auto call = [](const auto& lp, const auto& old, const auto& a, const auto& m,
                     const VESPOOptions& o, const rlpo::Normalizer& n, const auto& out,
                     const auto& w) { return rlpo::policy::vespo(lp, old, a, m, o, n, out, w); };

/// φ written from TRL's get_gamma_weights for a sequence log-weight `log_w` (already clamped).
double gamma_weight(double log_w, double a, const VESPOOptions& o) {
    const double k = a >= 0 ? o.k_pos : o.k_neg;
    const double lam = std::max(a >= 0 ? o.lambda_pos : o.lambda_neg, 1e-4);
    return std::exp(lam + k * log_w - lam * std::exp(log_w));
}
}  // namespace

TEST_CASE("vespo: gradient equals central finite differences", "[policy][vespo][fd]") {
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            // small log-ratios: the row sums stay where φ is not negligible
            const Batch b = spread_batch(60 + static_cast<std::uint64_t>(mode), 8, 12, 0.05, false,
                                         mode == Aggregation::SeqMeanTokenSum);
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::TokenMean) w.emplace(b.w);
            const auto r = rlpo::policy::vespo(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            // φ is detached: hold it at its value at b.logp by moving old_logp with x. The
            // value is then linear in x, so a large step has no truncation error and keeps the
            // rounding of the shifted log-ratios (amplified by φ's slope) small.
            const auto frozen = [&](const Mat<double>& x) {
                const Mat<double> old_shift = b.old + (x - b.logp);
                return rlpo::policy::vespo(x, old_shift, b.adv, b.mask, o, n,
                                           rlpo::no_grad<double>(), w)
                    .value;
            };
            rlpo::testing::GradCheckOptions step;
            step.step = 1e-3;
            const auto rep = rlpo::testing::check_gradient(frozen, b.logp, r.grad, step);
            INFO(rep.str());
            CHECK(rep.checked > 0);
            CHECK(rlpo::testing::count_gradient_failures(frozen, b.logp, r.grad, 1e-7, 1e-10,
                                                         step) == 0);
        }
}

TEMPLATE_TEST_CASE("vespo: agrees with the PyTorch autograd reference (TRL's formula)",
                   "[policy][vespo][torch]", float, double) {
    // two ranges of log-ratios: sums within the clamps, and sums that hit them (huge tokens)
    for (const bool huge : {false, true})
        torch_suite<TestType>(
            "vespo", "vespo", huge ? 1700 : 1600, option_sets(), call,
            [](rlpo_test::TorchReference::Case& c, const VESPOOptions& o) {
                c.p("k_pos", o.k_pos)
                    .p("lambda_pos", o.lambda_pos)
                    .p("k_neg", o.k_neg)
                    .p("lambda_neg", o.lambda_neg);
            },
            {"vespo/phi_seq_mean", "ppo_kl"}, [](const VESPOOptions&, Aggregation m) { return m; },
            huge ? 0.15 : 0.03, huge);
}

TEST_CASE("vespo: properties", "[policy][vespo][properties]") {
    SECTION("on-policy (w = 1): φ(1) = 1 and VESPO is REINFORCE −A·logp") {
        const Batch b = spread_batch(61);
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 0);
            for (const auto& o : option_sets()) {
                const auto v = rlpo::policy::vespo(b.logp, b.logp, b.adv, b.mask, o, n);
                const auto g = rlpo::policy::reinforce(b.logp, b.adv, b.mask, n);
                CHECK(rlpo_test::rel_err(v.value, g.value) < 1e-13);
                CHECK(rlpo_test::max_rel_err(v.grad, g.grad) < 1e-13);
                CHECK(v.metrics["vespo/phi_seq_mean"] == Approx(1.0).epsilon(1e-14));
                CHECK(v.metrics["ppo_kl"] == 0.0);
            }
        }
    }
    SECTION("closed form: the log-weight is the SUM of the row's log-ratios; (k, λ) by sign of A") {
        Mat<double> lp(2, 3), old = Mat<double>::Constant(2, 3, -1.0), a(2, 3), m(2, 3);
        lp << -0.7, -0.8, 5.0, -1.1, -1.0, -1.0;  // row 0: 0.3 + 0.2 (t = 2 masked); row 1: −0.1
        a << 1.5, 1.5, 1.5, -2.0, -2.0, -2.0;
        m << 1, 1, 0, 1, 1, 1;
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const VESPOOptions o;
        const auto r = rlpo::policy::vespo(lp, old, a, m, o, n);
        const double phi0 = std::exp(3.0 + 2.0 * 0.5 - 3.0 * std::exp(0.5));    // k₊ 2, λ₊ 3
        const double phi1 = std::exp(2.0 + 3.0 * -0.1 - 2.0 * std::exp(-0.1));  // k₋ 3, λ₋ 2
        CHECK(r.grad(0, 0) == Approx(-phi0 * 1.5).epsilon(1e-13));
        CHECK(r.grad(0, 1) == Approx(-phi0 * 1.5).epsilon(1e-13));
        CHECK(r.grad(0, 2) == 0.0);
        CHECK(r.grad(1, 1) == Approx(phi1 * 2.0).epsilon(1e-13));
        CHECK(r.value ==
              Approx(-phi0 * 1.5 * (-0.7 - 0.8) + phi1 * 2.0 * (-1.1 - 1.0 - 1.0)).epsilon(1e-13));
        CHECK(r.metrics["vespo/phi_seq_mean"] == Approx((phi0 + phi1) / 2).epsilon(1e-13));
        CHECK(r.metrics["ppo_kl"] == Approx(-(0.3 + 0.2 - 0.1 + 0 + 0) / 5).epsilon(1e-12));
    }
    SECTION("the clamps: tokens at ±20, the sequence at [ln 1e-8, 20]; φ decays to 0 above") {
        Mat<double> lp(3, 2), old = Mat<double>::Zero(3, 2), a = Mat<double>::Ones(3, 2);
        lp << 30.0, -25.0, -15.0, -15.0, 3.0, 4.0;  // sums: 20 − 20 = 0; −30 → ln 1e-8; 7
        old.setZero();
        const Mat<double> m = Mat<double>::Ones(3, 2);
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const VESPOOptions o;
        const auto r = rlpo::policy::vespo(lp, old, a, m, o, n);
        CHECK(r.grad(0, 0) == Approx(-1.0).epsilon(1e-14));  // log w = 0 → φ = 1
        CHECK(r.grad(1, 0) == Approx(-gamma_weight(std::log(1e-8), 1.0, o)).epsilon(1e-12));
        CHECK(r.grad(2, 0) == -gamma_weight(7.0, 1.0, o));  // e^{3 + 14 − 3e^7}: 0 in double
        CHECK(r.grad(2, 0) == 0.0);
        CHECK(std::isfinite(r.value));
    }
    SECTION("is_weights enter the sequence weight in log space, not as a loss factor") {
        const Batch b = spread_batch(62, 6, 8, 0.05, false, true);
        Mat<double> rho = Mat<double>::Ones(6, 8), shifted = b.old;
        for (Index i = 0; i < 6; ++i)
            for (Index t = 0; t < 8; ++t)
                if (b.mask(i, t) != 0) {
                    rho(i, t) = 1.3;  // one unmasked token per row: log ρ added to the row's sum
                    shifted(i, t) -= std::log(1.3);
                    break;
                }
        rlpo::policy::TokenWeights<double> w;
        w.emplace(rho);
        const auto x = rlpo::policy::vespo(b.logp, b.old, b.adv, b.mask, {}, {}, {}, w);
        const auto y = rlpo::policy::vespo(b.logp, shifted, b.adv, b.mask);
        CHECK(rlpo_test::rel_err(x.value, y.value) < 1e-12);
        CHECK(rlpo_test::max_rel_err(x.grad, y.grad) < 1e-12);
        // a zero weight counts as ln 1e-8 (the clamped log of 0)
        Mat<double> zero = Mat<double>::Ones(1, 1);
        zero(0, 0) = 0.0;
        const Mat<double> one = Mat<double>::Ones(1, 1), lp = Mat<double>::Constant(1, 1, -0.5);
        w.emplace(zero);
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto z = rlpo::policy::vespo(lp, lp, one, one, {}, n, {}, w);
        CHECK(z.grad(0, 0) == Approx(-gamma_weight(std::log(1e-8), 1.0, {})).epsilon(1e-12));
    }
    SECTION("an empty row counts in neither the loss nor vespo/phi_seq_mean") {
        Mat<double> lp(2, 2), old = Mat<double>::Zero(2, 2), a = Mat<double>::Ones(2, 2);
        lp << 0.2, 0.2, 9.0, 9.0;
        Mat<double> m = Mat<double>::Ones(2, 2);
        m.row(1).setZero();
        const auto r = rlpo::policy::vespo(lp, old, a, m);
        CHECK(r.metrics["vespo/phi_seq_mean"] == Approx(gamma_weight(0.4, 1.0, {})).epsilon(1e-13));
        CHECK(r.grad.row(1).isZero());
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Batch b = spread_batch(63, 8, 12, 0.05, false, true);
        rlpo_test::Invariance inv;
        inv.metrics = {"vespo/phi_seq_mean", "ppo_kl"};
        for (const auto& o : option_sets())
            require_micro_batch_invariance(
                [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                    return rlpo::policy::vespo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                               b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                               o, n);
                },
                b.mask, inv);
    }
    SECTION("the registry: 'vespo' parses, takes TRL's preset and dispatches to vespo") {
        const Batch b = spread_batch(64, 6, 10, 0.05, false, true);
        CHECK(rlpo::policy::parse_policy_loss("vespo") == rlpo::policy::PolicyLoss::VESPO);
        CHECK(std::string(rlpo::policy::to_string(rlpo::policy::PolicyLoss::VESPO)) == "vespo");
        for (auto anchor :
             {rlpo::policy::Anchor::TRL, rlpo::policy::Anchor::Verl, rlpo::policy::Anchor::Paper}) {
            auto o = rlpo::policy::make_policy_loss("vespo", anchor);
            CHECK(o.loss == rlpo::policy::PolicyLoss::VESPO);
            CHECK(o.vespo.k_pos == 2.0);  // TRL's GRPOConfig defaults
            CHECK(o.vespo.lambda_pos == 3.0);
            CHECK(o.vespo.k_neg == 3.0);
            CHECK(o.vespo.lambda_neg == 2.0);
        }
        auto o = rlpo::policy::make_policy_loss("vespo", rlpo::policy::Anchor::TRL);
        o.vespo.k_neg = 1.0;
        rlpo::policy::TokenWeights<double> w;
        w.emplace(b.w);
        const auto x = rlpo::policy::policy_loss(o, b.logp, b.old, b.adv, b.mask, {}, {}, w);
        const auto y = rlpo::policy::vespo(b.logp, b.old, b.adv, b.mask, o.vespo, {}, {}, w);
        CHECK(x.value == y.value);
        CHECK(x.grad == y.grad);
    }
}

TEST_CASE("vespo: bad input gives the documented error", "[policy][vespo][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::vespo(x, y, x, m),
        "policy::vespo(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, y, m), "advantages: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, x, y), "mask: expected shape");
    VESPOOptions o;
    o.k_pos = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, x, m, o),
                                    "policy::vespo(): k_pos: must be finite and >= 0");
    o = {};
    o.k_neg = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, x, m, o), "k_neg: must be finite");
    o = {};
    o.lambda_pos = -0.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, x, m, o), "lambda_pos: must be");
    o = {};
    o.lambda_neg = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, x, m, o), "lambda_neg: must be");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(bad, x, x, m),
                                    "policy::vespo(): logp: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, bad, x, m), "old_logp: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, bad, m), "advantages: NaN at [1, 2]");
    Mat<double> ninf = x;
    ninf(0, 1) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(ninf, ninf, x, m),
                                    "inputs at [0, 1] give a non-finite loss");
    // logp = −inf: ±inf where φ·A ≠ 0 (rejected, as every non-finite per-token loss),
    // undefined where A = 0
    const Mat<double> ones = Mat<double>::Ones(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(ninf, x, ones, m),
                                    "inputs at [0, 1] give a non-finite loss");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(ninf, x, x, m),
                                    "inputs at [0, 1] give a non-finite loss");
    rlpo::policy::TokenWeights<double> w;
    const Mat<double> negative = Mat<double>::Constant(2, 3, -1.0);
    w.emplace(negative);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, x, m, {}, {}, {}, w),
                                    "is_weights: entries under a non-zero mask must be finite");
    w.emplace(y);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::vespo(x, x, x, m, {}, {}, {}, w),
                                    "is_weights: expected shape");
    const auto empty = rlpo::policy::vespo(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
    CHECK(empty.metrics["vespo/phi_seq_mean"] == 0.0);
    CHECK(empty.metrics["ppo_kl"] == 0.0);
}
