// Clip-Cov and KL-Cov, four ways, plus the selection rules.
#include "policy/policy_support.hpp"

#include <rlpo/policy/cov.hpp>
#include <rlpo/policy/ppo_clip.hpp>

using namespace policy_test;
using rlpo::policy::ClipCovOptions;
using rlpo::policy::KLCovOptions;

namespace {
ClipCovOptions many(double lb = 1.0, double ub = 5.0, std::uint64_t seed = 7) {
    ClipCovOptions o;
    o.ratio = 0.05;  // several tokens per call on test-sized batches
    o.cov_lb = lb;
    o.cov_ub = ub;
    o.seed = seed;
    return o;
}
double mean_over(const Mat<double>& x, const Mat<double>& m) {
    return (x.array() * m.array()).sum() / m.sum();
}
}  // namespace

TEST_CASE("clip_cov / kl_cov: gradients equal central finite differences", "[policy][cov][fd]") {
    const Batch b = spread_batch(25, 8, 16, 0.15, false);
    const double ma = mean_over(b.adv, b.mask), ml = mean_over(b.logp, b.mask);
    for (const auto& o : {many(), many(0.1, 2.0, 3), ClipCovOptions{}})
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            const auto r = rlpo::policy::clip_cov(b.logp, b.old, b.adv, b.mask, o, n);
            const auto near_kink = [&](Index k) {
                const double q = std::exp(b.logp.data()[k] - b.old.data()[k]);
                const double cv = (b.adv.data()[k] - ma) * (b.logp.data()[k] - ml);
                return std::abs(q - 0.8) < 1e-4 || std::abs(q - 1.2) < 1e-4 ||
                       std::abs(cv - o.cov_lb) < 1e-3 || std::abs(cv - o.cov_ub) < 1e-3;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::clip_cov(x, b.old, b.adv, b.mask, o, n,
                                                  rlpo::no_grad<double>())
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-9, near_kink);
        }
    KLCovOptions k;
    k.ratio = 0.05;
    for (Aggregation mode : rlpo_test::all_modes()) {
        const rlpo::Normalizer n = norm_for(mode, 2);
        rlpo::policy::TokenWeights<double> w;
        w.emplace(b.w);
        const auto r = rlpo::policy::kl_cov(b.logp, b.old, b.adv, b.mask, k, n, {}, w);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                return rlpo::policy::kl_cov(x, b.old, b.adv, b.mask, k, n, rlpo::no_grad<double>(),
                                            w)
                    .value;
            },
            b.logp, r.grad, 1e-6, 1e-9,
            [&](Index q) { return std::abs(b.logp.data()[q] - b.old.data()[q]) < 1e-4; });
    }
}

TEMPLATE_TEST_CASE(
    "clip_cov: agrees with the PyTorch reference; the selection is a k-subset of the candidates",
    "[policy][cov][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy",
                                  std::string("clip_cov_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, adv, mask, w, sel;
        ClipCovOptions o;
        rlpo::Normalizer norm;
        bool weighted;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 1400;
    for (const auto& o : {many(), many(0.1, 2.0, 11), ClipCovOptions{}})
        for (Aggregation mode : rlpo_test::all_modes()) {
            const Batch b = spread_batch(seed++, 8, 16, 0.15, false);
            Run r{b.logp.cast<S>(),
                  b.old.cast<S>(),
                  b.adv.cast<S>(),
                  b.mask.cast<S>(),
                  b.w.cast<S>(),
                  {},
                  o,
                  norm_for(mode, seed),
                  seed % 2 == 0};
            r.mask(2, 3) = 0;
            r.logp(2, 3) = std::numeric_limits<S>::quiet_NaN();
            r.sel = rlpo::policy::clip_cov_selection(r.logp, r.old, r.adv, r.mask, o);
            auto& c = ref.add<S>("clip_cov");
            c.in("logp", r.logp)
                .in("old_logp", r.old)
                .in("advantages", r.adv)
                .in("mask", r.mask)
                .in("selected", r.sel);
            if (r.weighted) c.in("is_weights", r.w);
            c.p("clip_low", o.clip_low)
                .p("clip_high", o.clip_high)
                .p("cov_lb", o.cov_lb)
                .p("cov_ub", o.cov_ub);
            c.p("ratio", o.ratio);
            put_norm(c, r.norm);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        rlpo::policy::TokenWeights<S> w;
        if (r.weighted) w.emplace(r.w);
        const auto res = rlpo::policy::clip_cov(r.logp, r.old, r.adv, r.mask, r.o, r.norm, {}, w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["pg_clipfrac"], ref.scalar(k, "pg_clipfrac"), 1e-12) <
              tol);
        CHECK(rlpo_test::rel_err(res.metrics["ppo_kl"], ref.scalar(k, "ppo_kl"), 1e-12) < tol);
        const Mat<double>& cand = ref.out(k, "candidates");
        const double n_cand = cand.sum(), n_sel = r.sel.template cast<double>().sum();
        CHECK(n_sel == std::min(n_cand, ref.scalar(k, "k")));
        CHECK((r.sel.template cast<double>().array() <= cand.array()).all());
    }
}

TEMPLATE_TEST_CASE("kl_cov: agrees with the PyTorch autograd reference", "[policy][cov][torch]",
                   float, double) {
    KLCovOptions a, c;
    a.ratio = 0.05;
    c.ratio = 0.1;
    c.kl_coef = 0.1;
    torch_suite<TestType>(
        "kl_cov", "kl_cov", 1500, std::vector<KLCovOptions>{KLCovOptions{}, a, c},
        [](const auto& lp, const auto& old, const auto& adv, const auto& m, const KLCovOptions& o,
           const rlpo::Normalizer& n, const auto& out,
           const auto& w) { return rlpo::policy::kl_cov(lp, old, adv, m, o, n, out, w); },
        [](rlpo_test::TorchReference::Case& cs, const KLCovOptions& o) {
            cs.p("ratio", o.ratio).p("kl_coef", o.kl_coef);
        },
        {"ppo_kl"}, [](const KLCovOptions&, Aggregation m) { return m; }, 0.15, false);
}

TEST_CASE("clip_cov / kl_cov: properties", "[policy][cov][properties]") {
    const Batch b = spread_batch(26, 8, 16, 0.15, false);
    SECTION("huge mask weights: k = ρ·N beyond any integer selects every candidate") {
        // uniform weights 1e30 give the same covariances as weights 1; ρ·N ≈ 1e30 must not be
        // converted to an integer (undefined; it used to become 0: nothing selected)
        ClipCovOptions all = many(0.01, 10.0, 5);
        all.ratio = 1.0;  // k = N ≥ the candidates: all of them
        const auto want = rlpo::policy::clip_cov_selection(b.logp, b.old, b.adv, b.mask, all);
        REQUIRE(want.sum() > 0);
        const Mat<double> huge = b.mask * 1e30;
        const auto got =
            rlpo::policy::clip_cov_selection(b.logp, b.old, b.adv, huge, many(0.01, 10.0, 5));
        CHECK(got == want);
    }
    SECTION("the selection is reproducible from the seed, and zeroes exactly the selected tokens") {
        const auto s1 =
            rlpo::policy::clip_cov_selection(b.logp, b.old, b.adv, b.mask, many(0.01, 10.0, 5));
        const auto s2 =
            rlpo::policy::clip_cov_selection(b.logp, b.old, b.adv, b.mask, many(0.01, 10.0, 5));
        CHECK(s1 == s2);
        bool differs = false;
        for (std::uint64_t sd = 6; sd < 16 && !differs; ++sd)
            differs = rlpo::policy::clip_cov_selection(b.logp, b.old, b.adv, b.mask,
                                                       many(0.01, 10.0, sd)) != s1;
        CHECK(differs);
        const auto r = rlpo::policy::clip_cov(b.logp, b.old, b.adv, b.mask, many(0.01, 10.0, 5));
        for (Index k = 0; k < s1.size(); ++k)
            if (s1.data()[k] != 0) CHECK(r.grad.data()[k] == 0.0);
        CHECK(r.metrics["pg_clipfrac"] == Approx(s1.sum() / b.mask.sum()));
    }
    SECTION(
        "no candidate in the covariance band: Clip-Cov is PPO clip without clamp or dual-clip") {
        const ClipCovOptions far = many(1e6, 2e6);
        for (Aggregation mode : rlpo_test::all_modes()) {
            rlpo::Normalizer n;
            n.mode = mode;
            const auto c = rlpo::policy::clip_cov(b.logp, b.old, b.adv, b.mask, far, n);
            const auto p = rlpo::policy::ppo_clip(b.logp, b.old, b.adv, b.mask,
                                                  rlpo::policy::PPOClipOptions::openrlhf(), n);
            CHECK(rlpo_test::rel_err(c.value, p.value) < 1e-13);
            CHECK(rlpo_test::max_rel_err(c.grad, p.grad) < 1e-13);
            CHECK(c.metrics["pg_clipfrac"] == 0.0);
        }
    }
    SECTION("KL-Cov: equal covariances select the first valid tokens in row-major order") {
        Mat<double> lp = b.logp, adv = Mat<double>::Constant(b.adv.rows(), b.adv.cols(), 0.5),
                    m = b.mask;
        KLCovOptions o;
        o.ratio = 3.0 / m.sum();  // k = 3 (cov ≡ 0: a 3-way tie everywhere)
        o.kl_coef = 1.0;
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rlpo::policy::kl_cov(lp, b.old, adv, m, o, n);
        Index seen = 0;
        for (Index k = 0; k < lp.size(); ++k) {
            if (m.data()[k] == 0) continue;
            const double lr = lp.data()[k] - b.old.data()[k];
            const double base = -0.5 * std::exp(lr);
            const double extra = seen < 3 ? (lr > 0 ? 1.0 : -1.0) : 0.0;
            CHECK(r.grad.data()[k] == Approx(base + extra));
            ++seen;
        }
    }
    SECTION("KL-Cov with β = 0 is the unclipped −A·r surrogate; ppo_kl is mean |lr|") {
        KLCovOptions o;
        o.kl_coef = 0;
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rlpo::policy::kl_cov(b.logp, b.old, b.adv, b.mask, o, n);
        const Mat<double> lr = b.logp - b.old;
        CHECK(r.value ==
              Approx(-(b.mask.array() * b.adv.array() * lr.array().exp()).sum()).epsilon(1e-13));
        CHECK(r.metrics["ppo_kl"] ==
              Approx((b.mask.array() * lr.array().abs()).sum() / b.mask.sum()));
    }
}

TEST_CASE("clip_cov / kl_cov: bad input gives the documented error", "[policy][cov][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::clip_cov(x, y, x, m),
        "policy::clip_cov(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::kl_cov(x, x, y, m),
        "policy::kl_cov(): advantages: expected shape [2, 3] (same as logp), given [2, 4]");
    ClipCovOptions o;
    o.ratio = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::clip_cov(x, x, x, m, o),
                                    "ratio: must be in (0, 1]");
    o = {};
    o.cov_lb = 5;
    o.cov_ub = 1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::clip_cov(x, x, x, m, o),
                                    "need finite cov_lb < cov_ub");
    o = {};
    o.clip_high = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::clip_cov(x, x, x, m, o),
                                    "clip_high: must be > 0");
    KLCovOptions k;
    k.ratio = 2;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::kl_cov(x, x, x, m, k),
                                    "ratio: must be in (0, 1]");
    k = {};
    k.kl_coef = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::kl_cov(x, x, x, m, k), "kl_coef: must be >= 0");
    Mat<double> bad = x;
    bad(0, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::clip_cov(bad, x, x, m), "logp: NaN at [0, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::kl_cov(x, bad, x, m), "old_logp: NaN at [0, 2]");
    Mat<double> ninf = x;
    ninf(1, 1) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::kl_cov(ninf, x, x, m),
                                    "logp: non-finite value -inf at [1, 1]");
    const auto empty = rlpo::policy::clip_cov(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.metrics["pg_clipfrac"] == 0.0);
    const auto empty2 = rlpo::policy::kl_cov(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty2.value == 0.0);
}
