// DPPO binary-TV and binary-KL, four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/dppo.hpp>

using namespace policy_test;
using rlpo::policy::DPPODivergence;
using rlpo::policy::DPPOOptions;

namespace {
std::vector<DPPOOptions> option_sets() {
    DPPOOptions tight = DPPOOptions::tv(0.02);
    tight.ratio_cap = 1.5;  // truncation active
    DPPOOptions kl_tight = DPPOOptions::kl(0.005);
    kl_tight.delta_high = 0.02;
    kl_tight.ratio_cap = 2.0;
    return {DPPOOptions::tv(), DPPOOptions::kl(),      tight,
            kl_tight,          DPPOOptions::verl_tv(), DPPOOptions::verl_kl()};
}
const auto call = [](const auto& lp, const auto& old, const auto& a, const auto& m,
                     const DPPOOptions& o, const rlpo::Normalizer& n, const auto& out,
                     const auto& w) { return rlpo::policy::dppo(lp, old, a, m, o, n, out, w); };
double binary_kl(double x, double xo) {
    const double p = std::exp(x), q = std::exp(xo);
    return q * (xo - x) + (1 - q) * std::log((1 - q + 1e-8) / (1 - p + 1e-8));
}
}  // namespace

TEST_CASE("dppo: gradient equals central finite differences", "[policy][dppo][fd]") {
    const Batch b = spread_batch(19);
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::SeqMeanTokenSum) w.emplace(b.w);
            const auto r = rlpo::policy::dppo(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            const auto near_kink = [&](Index k) {  // trust-region or truncation boundary
                const double x = b.logp.data()[k], xo = b.old.data()[k];
                const double d = o.divergence == DPPODivergence::BinaryTV
                                     ? std::exp(x) - std::exp(xo)
                                     : binary_kl(x, xo);
                return std::abs(std::abs(d) - o.delta_high) < 1e-4 ||
                       std::abs(std::abs(d) - o.delta_low) < 1e-4 || std::abs(x - xo) < 1e-4 ||
                       std::abs(std::exp(x - xo) - o.ratio_cap) < 1e-4;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    // weight and trust-region mask are detached: hold them at b.logp by moving
                    // old_logp with x (r and, to first order, the mask stay put).
                    const Mat<double> old_shift = b.old + (x - b.logp);
                    return rlpo::policy::dppo(x, old_shift, b.adv, b.mask, o, n,
                                              rlpo::no_grad<double>(), w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-8, near_kink);
        }
}

TEMPLATE_TEST_CASE("dppo: agrees with the PyTorch autograd reference", "[policy][dppo][torch]",
                   float, double) {
    torch_suite<TestType>(
        "dppo", "dppo", 1200, option_sets(), call,
        [](rlpo_test::TorchReference::Case& c, const DPPOOptions& o) {
            c.s("divergence", o.divergence == DPPODivergence::BinaryTV ? "tv" : "kl");
            c.p("delta_low", o.delta_low).p("delta_high", o.delta_high).p("ratio_cap", o.ratio_cap);
        },
        {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"},
        [](const DPPOOptions&, Aggregation m) { return m; });
}

TEST_CASE("dppo: properties", "[policy][dppo][properties]") {
    SECTION(
        "binary TV: a token leaves the trust region only in the direction its advantage pushes") {
        // p_old = 0.5. Token 0: p = 0.8 (+0.3), A > 0: dropped. Token 1: p = 0.8, A < 0: kept (the
        // update would pull it back). Token 2: p = 0.2 (−0.3), A < 0: dropped. Token 3: p = 0.55, A > 0: kept.
        Mat<double> lp(1, 4), old = Mat<double>::Constant(1, 4, std::log(0.5)), a(1, 4);
        lp << std::log(0.8), std::log(0.8), std::log(0.2), std::log(0.55);
        a << 1.0, -1.0, -1.0, 2.0;
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r =
            rlpo::policy::dppo(lp, old, a, Mat<double>::Ones(1, 4), DPPOOptions::tv(), n);
        CHECK(r.grad(0, 0) == 0.0);
        CHECK(r.grad(0, 1) == Approx(1.6));  // −A·r = 0.8/0.5
        CHECK(r.grad(0, 2) == 0.0);
        CHECK(r.grad(0, 3) == Approx(-2.0 * 1.1));
        CHECK(r.metrics["pg_clipfrac"] == 0.5);
        CHECK(r.value == Approx(1.6 * std::log(0.8) - 2.2 * std::log(0.55)));
    }
    SECTION("binary KL at p = q is 0 and grows on both sides; the ratio is truncated at c") {
        CHECK(binary_kl(std::log(0.3), std::log(0.3)) == Approx(0.0).margin(1e-12));
        Mat<double> lp(1, 1), old(1, 1), a = Mat<double>::Ones(1, 1);
        lp << std::log(0.03);
        old << std::log(0.001);  // r = 30 > c = 20; p − q small: inside the TV region
        const auto r = rlpo::policy::dppo(lp, old, a, Mat<double>::Ones(1, 1), DPPOOptions::tv());
        CHECK(r.grad(0, 0) == Approx(-20.0));
        CHECK(r.metrics["pg_clipfrac_lower"] == 1.0);
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Batch b = spread_batch(20);
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::dppo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                          b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                          DPPOOptions::kl(), n);
            },
            b.mask);
    }
}

TEST_CASE("dppo: bad input gives the documented error", "[policy][dppo][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::dppo(x, y, x, m),
        "policy::dppo(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    DPPOOptions o;
    o.delta_low = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dppo(x, x, x, m, o), "delta_low: must be > 0");
    o = {};
    o.delta_high = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dppo(x, x, x, m, o), "delta_high: must be > 0");
    o = {};
    o.ratio_cap = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dppo(x, x, x, m, o), "ratio_cap: must be > 0");
    Mat<double> bad = x;
    bad(1, 0) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dppo(x, bad, x, m), "old_logp: NaN at [1, 0]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::dppo(ninf, ninf, m, m),
                                    "non-finite loss or gradient");
    const auto empty = rlpo::policy::dppo(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
}
