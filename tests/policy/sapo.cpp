// SAPO, four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/sapo.hpp>

using namespace policy_test;
using rlpo::policy::SAPOOptions;

namespace {
std::vector<SAPOOptions> option_sets() {
    SAPOOptions steep;
    steep.tau_pos = 3.0;
    steep.tau_neg = 5.0;
    steep.log_ratio_clamp = 2.0;
    steep.aggregation = std::nullopt;
    SAPOOptions free_mode = SAPOOptions::trl();
    free_mode.aggregation = std::nullopt;
    return {SAPOOptions::verl(), SAPOOptions::trl(), steep, free_mode};
}
const auto call = [](const auto& lp, const auto& old, const auto& a, const auto& m,
                     const SAPOOptions& o, const rlpo::Normalizer& n, const auto& out,
                     const auto& w) { return rlpo::policy::sapo(lp, old, a, m, o, n, out, w); };
}  // namespace

TEST_CASE("sapo: gradient equals central finite differences", "[policy][sapo][fd]") {
    const Batch b = spread_batch(14);
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::TokenSum) w.emplace(b.w);
            const auto r = rlpo::policy::sapo(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            const auto near_kink = [&](Index k) {
                return std::abs(std::abs(b.logp.data()[k] - b.old.data()[k]) - o.log_ratio_clamp) <
                       1e-4;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::sapo(x, b.old, b.adv, b.mask, o, n,
                                              rlpo::no_grad<double>(), w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-8, near_kink);
        }
}

TEMPLATE_TEST_CASE("sapo: agrees with the PyTorch autograd reference", "[policy][sapo][torch]",
                   float, double) {
    torch_suite<TestType>(
        "sapo", "sapo", 1000, option_sets(), call,
        [](rlpo_test::TorchReference::Case& c, const SAPOOptions& o) {
            c.p("tau_pos", o.tau_pos)
                .p("tau_neg", o.tau_neg)
                .p("log_ratio_clamp", o.log_ratio_clamp);
        },
        {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"},
        [](const SAPOOptions& o, Aggregation m) { return o.aggregation ? *o.aggregation : m; });
}

TEST_CASE("sapo: properties", "[policy][sapo][properties]") {
    SECTION("at r = 1 the gradient is PPO's: −A per token (f'(1) = 1), value −(2/τ)·A") {
        const Batch b = spread_batch(15);
        SAPOOptions o;
        o.aggregation = Aggregation::TokenSum;
        const auto r = rlpo::policy::sapo(b.logp, b.logp, b.adv, b.mask, o);
        CHECK(rlpo_test::max_rel_err(r.grad, Mat<double>(-(b.adv.array() * b.mask.array()))) <
              1e-14);
        double v = 0;
        for (Index k = 0; k < b.adv.size(); ++k)
            v -= b.mask.data()[k] * b.adv.data()[k] * 2.0 / (b.adv.data()[k] > 0 ? 1.0 : 1.05);
        CHECK(r.value == Approx(v).epsilon(1e-13));
    }
    SECTION("the gate decays smoothly: far from r = 1 the gradient tends to 0, never jumps") {
        Mat<double> lp(1, 3), old = Mat<double>::Zero(1, 3), a = Mat<double>::Ones(1, 3);
        lp << std::log(1.2), std::log(3.0), std::log(30.0);
        SAPOOptions o;
        o.aggregation = Aggregation::TokenSum;
        const auto r = rlpo::policy::sapo(lp, old, a, Mat<double>::Ones(1, 3), o);
        const auto expect = [](double q) {
            const double s = 1 / (1 + std::exp(-(q - 1)));
            return -4 * s * (1 - s) * q;
        };
        CHECK(r.grad(0, 0) == Approx(expect(1.2)));
        CHECK(r.grad(0, 1) == Approx(expect(3.0)));
        CHECK(std::abs(r.grad(0, 2)) < 1e-9);
        CHECK(r.grad(0, 0) < 0);
    }
    SECTION("asymmetric temperatures: A ≤ 0 uses τ_neg") {
        Mat<double> lp(1, 2), old = Mat<double>::Zero(1, 2), a(1, 2);
        lp << 0.5, 0.5;
        a << 1.0, -1.0;
        SAPOOptions o;
        o.tau_neg = 2.0;
        o.aggregation = Aggregation::TokenSum;
        const auto r = rlpo::policy::sapo(lp, old, a, Mat<double>::Ones(1, 2), o);
        const double q = std::exp(0.5);
        const double s1 = 1 / (1 + std::exp(-(q - 1))), s2 = 1 / (1 + std::exp(-2 * (q - 1)));
        CHECK(r.value == Approx(-4 * s1 + 2 * s2));
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Batch b = spread_batch(16);
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::sapo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                          b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                          SAPOOptions{}, n);
            },
            b.mask);
    }
}

TEST_CASE("sapo: bad input gives the documented error", "[policy][sapo][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::sapo(x, y, x, m),
        "policy::sapo(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::sapo(x, x, y, m), "advantages: expected shape");
    SAPOOptions o;
    o.tau_pos = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::sapo(x, x, x, m, o), "tau_pos: must be > 0");
    o = {};
    o.tau_neg = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::sapo(x, x, x, m, o), "tau_neg: must be > 0");
    o = {};
    o.log_ratio_clamp = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::sapo(x, x, x, m, o),
                                    "log_ratio_clamp: must be > 0");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::sapo(bad, x, x, m), "logp: NaN at [1, 2]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::sapo(ninf, ninf, m, m),
                                    "non-finite loss or gradient");
    const auto fin = rlpo::policy::sapo(ninf, x, m, m);  // r → 0: gate bounded, finite
    CHECK(std::isfinite(fin.value));
    const auto empty = rlpo::policy::sapo(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
}
