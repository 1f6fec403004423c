// GSPO (sequence and token level), four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/gspo.hpp>

using namespace policy_test;
using rlpo::policy::GSPOLevel;
using rlpo::policy::GSPOOptions;

namespace {
std::vector<GSPOOptions> option_sets() {
    GSPOOptions wide = GSPOOptions::trl(0.2, 0.28);  // sequence level, caller's aggregation
    GSPOOptions capped = GSPOOptions::verl(0.2, 0.2);
    capped.log_ratio_cap = 0.1;  // cap active on some rows
    GSPOOptions paper;           // ε 3e-4 / 4e-4: most rows clipped
    GSPOOptions token_free = GSPOOptions::verl(0.2, 0.28);
    token_free.aggregation = std::nullopt;
    return {wide, capped, paper, token_free, GSPOOptions::verl(0.2, 0.28)};
}
/// Rows whose sequence ratio is within the FD step of a kink (clip bounds, cap) are skipped.
std::function<bool(Index)> near_kink(const Batch& b, const GSPOOptions& o) {
    std::vector<bool> row_kink(static_cast<std::size_t>(b.logp.rows()), false);
    for (Index i = 0; i < b.logp.rows(); ++i) {
        const double len = b.mask.row(i).sum();
        if (len == 0) continue;
        const double ls =
            (b.mask.row(i).array() * (b.logp.row(i) - b.old.row(i)).array()).sum() / len;
        const double s = std::exp(std::min(ls, o.log_ratio_cap));
        row_kink[static_cast<std::size_t>(i)] = std::abs(s - (1 - o.clip_low)) < 1e-4 ||
                                                std::abs(s - (1 + o.clip_high)) < 1e-4 ||
                                                std::abs(ls - o.log_ratio_cap) < 1e-4;
    }
    const Index T = b.logp.cols();
    return [row_kink, T](Index k) {
        return static_cast<bool>(row_kink[static_cast<std::size_t>(k / T)]);
    };
}
}  // namespace

TEST_CASE("gspo: gradient equals central finite differences", "[policy][gspo][fd]") {
    // Sequence level: the gradient of the value, for any advantages. Token level: equal to the
    // gradient of the value when A is constant over each row (GRPO), which is checked here.
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const bool token = o.level == GSPOLevel::Token;
            const Batch b =
                spread_batch(13 + static_cast<std::uint64_t>(mode), 8, 12, 0.15, false, token);
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::TokenSum && !token)
                w.emplace(b.w);  // token level + weights: torch only
            const auto r = rlpo::policy::gspo(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::gspo(x, b.old, b.adv, b.mask, o, n,
                                              rlpo::no_grad<double>(), w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-10, near_kink(b, o));
        }
}

TEMPLATE_TEST_CASE("gspo: agrees with the PyTorch autograd reference", "[policy][gspo][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy", std::string("gspo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, adv, mask, w;
        GSPOOptions o;
        rlpo::Normalizer norm;
        bool weighted;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 700;
    for (const auto& o : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            const Batch b = spread_batch(seed++, 8, 12, 0.15, false, false);  // per-token A
            Run r{b.logp.cast<S>(),     b.old.cast<S>(), b.adv.cast<S>(),
                  b.mask.cast<S>(),     b.w.cast<S>(),   o,
                  norm_for(mode, seed), seed % 2 == 0};
            r.mask(2, 3) = 0;
            r.logp(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& c = ref.add<S>("gspo");
            c.in("logp", r.logp).in("old_logp", r.old).in("advantages", r.adv).in("mask", r.mask);
            if (r.weighted) c.in("is_weights", r.w);
            c.s("level", o.level == GSPOLevel::Token ? "token" : "sequence");
            c.p("clip_low", o.clip_low)
                .p("clip_high", o.clip_high)
                .p("log_ratio_cap", o.log_ratio_cap);
            rlpo::Normalizer eff = r.norm;
            if (o.aggregation)
                eff.mode = *o.aggregation;  // documented: the forced mode replaces the caller's
            put_norm(c, eff);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        rlpo::policy::TokenWeights<S> w;
        if (r.weighted) w.emplace(r.w);
        const auto res = rlpo::policy::gspo(r.logp, r.old, r.adv, r.mask, r.o, r.norm, {}, w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        for (const char* name : {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"}) {
            INFO(name);
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(k, name), 1e-12) < tol);
        }
    }
}

TEST_CASE("gspo: properties", "[policy][gspo][properties]") {
    SECTION("row-constant advantages: token and sequence level give the same value and gradient") {
        const Batch b = spread_batch(8, 8, 12, 0.15, false, true);
        for (Aggregation mode : rlpo_test::all_modes()) {
            GSPOOptions tok = GSPOOptions::verl(0.2, 0.28), seq = tok;
            tok.aggregation = seq.aggregation = std::nullopt;
            seq.level = GSPOLevel::Sequence;
            rlpo::Normalizer n;
            n.mode = mode;
            const auto a = rlpo::policy::gspo(b.logp, b.old, b.adv, b.mask, tok, n);
            const auto c = rlpo::policy::gspo(b.logp, b.old, b.adv, b.mask, seq, n);
            CHECK(rlpo_test::rel_err(a.value, c.value) < 1e-13);
            CHECK(rlpo_test::max_rel_err(a.grad, c.grad) < 1e-13);
        }
    }
    SECTION("closed form, one row: loss −A·s with s the geometric-mean ratio; gradient −A·s/|y|") {
        Mat<double> lp(1, 3), old = Mat<double>::Zero(1, 3), a = Mat<double>::Constant(1, 3, 2.0);
        lp << 0.03, -0.06, 0.09;  // mean 0.02: s = e^0.02 inside [0.8, 1.2]
        const auto r =
            rlpo::policy::gspo(lp, old, a, Mat<double>::Ones(1, 3), GSPOOptions::trl(0.2, 0.2));
        const double s = std::exp(0.02);
        CHECK(r.value == Approx(-2.0 * s).epsilon(1e-14));
        for (Index t = 0; t < 3; ++t) CHECK(r.grad(0, t) == Approx(-2.0 * s / 3).epsilon(1e-14));
        CHECK(r.metrics["ppo_kl"] == Approx(-0.02));
    }
    SECTION("the forced seq-mean-token-mean replaces the caller's mode, keeping its counts") {
        const Batch b = spread_batch(9, 8, 12, 0.15, false);
        rlpo::Normalizer tm, sm;
        tm.mode = Aggregation::TokenMean;
        sm.mode = Aggregation::SeqMeanTokenMean;
        tm.num_seqs = sm.num_seqs = 20.0;
        const auto a =
            rlpo::policy::gspo(b.logp, b.old, b.adv, b.mask, GSPOOptions::verl(0.2, 0.2), tm);
        const auto c =
            rlpo::policy::gspo(b.logp, b.old, b.adv, b.mask, GSPOOptions::verl(0.2, 0.2), sm);
        CHECK(a.value == c.value);
        CHECK(a.grad == c.grad);
    }
    SECTION("cap: a row with log s > K has ratio e^K and no gradient; s → 0 is clipped") {
        Mat<double> lp(2, 2), old = Mat<double>::Zero(2, 2), a = Mat<double>::Constant(2, 2, -1.0);
        lp << 30.0, 30.0, -1000.0, 0.0;
        GSPOOptions o = GSPOOptions::verl(0.2, 0.2);
        o.aggregation = Aggregation::TokenSum;
        const auto r = rlpo::policy::gspo(lp, old, a, Mat<double>::Ones(2, 2), o);
        CHECK(
            r.grad
                .isZero());  // row 0 capped (e^10 > 1.2, A<0: unclipped, but capped); row 1 s ≈ 0 clipped
        CHECK(r.value == Approx(2 * std::exp(10.0) + 2 * 0.8));
        // a −inf log-prob gives s = 0 and the same loss, but ppo_kl (the mean of −lr) is +inf:
        // the finite-result check reports it
        lp(1, 0) = -std::numeric_limits<double>::infinity();
        RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::policy::gspo(lp, old, a, Mat<double>::Ones(2, 2), o),
                                     "metric 'ppo_kl' is not finite");
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Batch b = spread_batch(10, 8, 12, 0.15, false);
        for (auto o : {GSPOOptions::verl(0.2, 0.28), GSPOOptions::trl(0.2, 0.28)}) {
            o.aggregation = std::nullopt;
            require_micro_batch_invariance(
                [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                    return rlpo::policy::gspo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                              b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                              o, n);
                },
                b.mask);
        }
    }
}

TEST_CASE("gspo: the parallel row loop gives the serial result and reports errors in row order",
          "[policy][gspo][properties]") {
    // 64×1024 tokens take the OpenMP path (when enabled); its uneven micro-batches (≤ 11 rows)
    // take the serial one: with global counts they must add up to the same value and gradient.
    const Batch b = spread_batch(11, 64, 1024, 0.15, false);
    for (auto o : {GSPOOptions::verl(0.2, 0.28), GSPOOptions::trl(0.2, 0.28)}) {
        o.aggregation = std::nullopt;
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::gspo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                          b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr), o,
                                          n);
            },
            b.mask);
    }
    Mat<double> bad = b.logp, m = b.mask;
    m.row(40).setOnes();
    m.row(50).setOnes();
    bad(50, 7) = std::numeric_limits<double>::quiet_NaN();
    bad(40, 900) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(bad, b.old, b.adv, m),
                                    "logp: NaN at [40, 900]");
}

TEST_CASE("gspo: bad input gives the documented error", "[policy][gspo][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::gspo(x, y, x, m),
        "policy::gspo(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(x, x, y, m), "advantages: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(x, x, x, y), "mask: expected shape");
    GSPOOptions o;
    o.clip_low = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(x, x, x, m, o), "clip_low: must be > 0");
    o = {};
    o.clip_high = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(x, x, x, m, o), "clip_high: must be > 0");
    o = {};
    o.log_ratio_cap = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(x, x, x, m, o),
                                    "log_ratio_cap: must be > 0");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(bad, x, x, m), "logp: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(x, x, bad, m), "advantages: NaN at [1, 2]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(ninf, ninf, x, m),
                                    "non-finite loss or gradient");
    Mat<double> mixed = x;
    mixed(0, 0) = std::numeric_limits<double>::infinity();
    mixed(0, 1) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::gspo(mixed, x, x, m),
                                    "undefined (NaN) sequence log-ratio");
    const auto empty = rlpo::policy::gspo(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
}
