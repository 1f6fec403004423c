// GMPO (verl geo_mean), four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/gmpo.hpp>

using namespace policy_test;
using rlpo::policy::GMPOOptions;

namespace {
std::vector<GMPOOptions> option_sets() {
    GMPOOptions free_mode = GMPOOptions::verl(0.2, 0.28);
    free_mode.aggregation = std::nullopt;
    return {GMPOOptions{}, GMPOOptions::verl(), free_mode};
}
const auto call = [](const auto& lp, const auto& old, const auto& a, const auto& m,
                     const GMPOOptions& o, const rlpo::Normalizer& n, const auto& out,
                     const auto& w) { return rlpo::policy::gmpo(lp, old, a, m, o, n, out, w); };
}  // namespace

TEST_CASE("gmpo: gradient equals central finite differences", "[policy][gmpo][fd]") {
    const Batch b = spread_batch(21, 8, 12, 0.15, false);
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::TokenMean) w.emplace(b.w);
            const auto r = rlpo::policy::gmpo(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            const auto near_kink = [&](Index k) {
                const double lr = b.logp.data()[k] - b.old.data()[k];
                return std::abs(lr + o.clip_low) < 1e-4 || std::abs(lr - o.clip_high) < 1e-4;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::gmpo(x, b.old, b.adv, b.mask, o, n,
                                              rlpo::no_grad<double>(), w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-9, near_kink);
        }
}

TEMPLATE_TEST_CASE("gmpo: agrees with the PyTorch autograd reference", "[policy][gmpo][torch]",
                   float, double) {
    torch_suite<TestType>(
        "gmpo", "gmpo", 1300, option_sets(), call,
        [](rlpo_test::TorchReference::Case& c, const GMPOOptions& o) {
            c.p("clip_low", o.clip_low).p("clip_high", o.clip_high);
        },
        {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"},
        [](const GMPOOptions& o, Aggregation m) { return o.aggregation ? *o.aggregation : m; },
        0.15, false);
}

TEST_CASE("gmpo: properties", "[policy][gmpo][properties]") {
    SECTION("closed form: one row, mixed signs, seq-mean: −Ā·exp(mean clipped lr)") {
        Mat<double> lp(1, 4), old = Mat<double>::Zero(1, 4), a(1, 4);
        lp << 0.1, 0.9, -0.9, -0.1;
        a << 1.0, 1.0, 1.0, -1.0;  // A>0: 0.9 clipped to 0.4, −0.9 kept; A<0: −0.1 kept
        const auto r = rlpo::policy::gmpo(lp, old, a, Mat<double>::Ones(1, 4));
        const double rho = std::exp((0.1 + 0.4 - 0.9 - 0.1) / 4), abar = 0.5;
        CHECK(r.value == Approx(-abar * rho).epsilon(1e-14));
        CHECK(r.grad(0, 0) == Approx(-abar * rho / 4).epsilon(1e-14));
        CHECK(r.grad(0, 1) == 0.0);
        CHECK(r.grad(0, 2) == Approx(-abar * rho / 4).epsilon(1e-14));
        CHECK(r.grad(0, 3) == Approx(-abar * rho / 4).epsilon(1e-14));
        CHECK(r.metrics["pg_clipfrac"] == 0.5);  // 0.9 and −0.9 are outside [−0.4, 0.4] with A>0
        CHECK(r.metrics["pg_clipfrac_lower"] == 0.0);
    }
    SECTION("ratio = 1: the loss is −mean over rows of Ā (GRPO's value at the old policy)") {
        const Batch b = spread_batch(22, 8, 12, 0.15, false);
        const auto r = rlpo::policy::gmpo(b.logp, b.logp, b.adv, b.mask);
        double expect = 0, rows = 0;
        for (Index i = 0; i < b.mask.rows(); ++i) {
            const double len = b.mask.row(i).sum();
            if (len == 0) continue;
            expect -= (b.adv.row(i).array() * b.mask.row(i).array()).sum() / len;
            rows += 1;
        }
        CHECK(r.value == Approx(expect / rows).epsilon(1e-13));
    }
    SECTION("verl counts empty rows: num_seqs = B reproduces its mean over all rows") {
        const Batch b = spread_batch(23, 8, 12, 0.15, false);
        rlpo::Normalizer n;
        n.num_seqs = static_cast<double>(b.mask.rows());
        const auto all = rlpo::policy::gmpo(b.logp, b.old, b.adv, b.mask, GMPOOptions::verl(), n);
        const auto nonempty = rlpo::policy::gmpo(b.logp, b.old, b.adv, b.mask, GMPOOptions::verl());
        double ne = 0;
        for (Index i = 0; i < b.mask.rows(); ++i) ne += b.mask.row(i).sum() > 0 ? 1 : 0;
        CHECK(all.value ==
              Approx(nonempty.value * ne / static_cast<double>(b.mask.rows())).epsilon(1e-13));
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Batch b = spread_batch(24, 8, 12, 0.15, false);
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::gmpo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                          b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                          GMPOOptions{}, n);
            },
            b.mask);
    }
}

TEST_CASE("gmpo: the parallel row loop gives the serial result and reports errors in row order",
          "[policy][gmpo][properties]") {
    const Batch b = spread_batch(25, 64, 1024, 0.15, false);
    require_micro_batch_invariance(
        [&](Index r0, Index nr, const rlpo::Normalizer& n) {
            return rlpo::policy::gmpo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                      b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                      GMPOOptions{}, n);
        },
        b.mask);
    Mat<double> bad = b.adv, m = b.mask;
    m.row(33).setOnes();
    m.row(60).setOnes();
    bad(60, 1) = std::numeric_limits<double>::quiet_NaN();
    bad(33, 1000) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gmpo(b.logp, b.old, bad, m),
                                    "advantages: NaN at [33, 1000]");
}

TEST_CASE("gmpo: bad input gives the documented error", "[policy][gmpo][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::gmpo(x, y, x, m),
        "policy::gmpo(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gmpo(x, x, x, y), "mask: expected shape");
    GMPOOptions o;
    o.clip_low = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gmpo(x, x, x, m, o), "clip_low: must be > 0");
    o = {};
    o.clip_high = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gmpo(x, x, x, m, o), "clip_high: must be > 0");
    Mat<double> bad = x;
    bad(1, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gmpo(x, x, bad, m), "advantages: NaN at [1, 1]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gmpo(ninf, ninf, m, m),
                                    "non-finite loss or gradient");
    Mat<double> mixed = x, a = m;
    mixed(0, 0) = std::numeric_limits<double>::infinity();
    mixed(0, 1) = -std::numeric_limits<double>::infinity();
    a(0, 0) = -1;  // A<0 keeps +inf, A>0 keeps −inf: the row sum is undefined
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gmpo(mixed, x, a, m),
                                    "undefined (NaN) clipped log-ratio sum");
    const auto empty = rlpo::policy::gmpo(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
}

TEST_CASE("gmpo: a huge log-ratio is taken in log space", "[policy][gmpo][bad_input]") {
    // lr = [1600.8, −1] with A = −1e−300 < 0: lr̃ = [1600.8, −0.4] (the second token clipped),
    // ρ = exp(800.2) overflows a double, but −Ā·ρ = 1e−300·e^800.2 ≈ 3e47 does not. Reference in
    // long double (range 1e±4932).
    Mat<double> lp(1, 2), old(1, 2), a(1, 2), m = Mat<double>::Ones(1, 2);
    lp << 0.0, -1.0;
    old << -1600.8, 0.0;
    a << -1e-300, -1e-300;
    const long double want = std::exp(static_cast<long double>(1600.8 - 0.4) / 2) * 1e-300L;
    const auto r = rlpo::policy::gmpo(lp, old, a, m);
    CHECK(std::isfinite(r.value));
    CHECK(std::abs(r.value / static_cast<double>(want) - 1) < 1e-12);
    REQUIRE(r.grad.allFinite());
    // ∂/∂logp_0 = term / |y|, the clipped token exactly 0
    CHECK(std::abs(r.grad(0, 0) / static_cast<double>(want / 2) - 1) < 1e-12);
    CHECK(r.grad(0, 1) == 0.0);
    // the case: lr = 5001 with A = −1: the true term e^2500 overflows → numerical_error
    old(0, 0) = -5001;
    a << -1, -1;
    RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::policy::gmpo(lp, old, a, m), "overflows");
    // …but over a long row its geometric mean is finite: clipped tokens exactly 0, rest finite
    Mat<double> lp8 = Mat<double>::Zero(1, 8), old8 = Mat<double>::Zero(1, 8),
                a8 = Mat<double>::Constant(1, 8, -1.0), m8 = Mat<double>::Ones(1, 8);
    old8(0, 0) = -5001;
    lp8(0, 1) = -1;  // clipped (A < 0, lr < −ε_l)
    const auto r8 = rlpo::policy::gmpo(lp8, old8, a8, m8);
    const long double want8 = std::exp((5001.0L - 0.4L) / 8);
    CHECK(std::abs(r8.value / static_cast<double>(want8) - 1) < 1e-12);
    REQUIRE(r8.grad.allFinite());
    CHECK(r8.grad(0, 1) == 0.0);
    // huge mask weights: Σ m·lr overflows, the weighted mean does not
    Mat<double> mh = Mat<double>::Constant(1, 2, 1e300);
    Mat<double> lph(1, 2), oldh = Mat<double>::Zero(1, 2), ah = Mat<double>::Constant(1, 2, 1e300);
    lph << 100.0, 100.0;  // A > 0: clipped at ε_h = 0.4 → ρ = e^0.4
    const auto rh = rlpo::policy::gmpo(lph, oldh, ah, mh);
    CHECK(std::abs(rh.value / (-1e300 * std::exp(0.4)) - 1) < 1e-12);
    CHECK(rh.grad.isZero());
}
