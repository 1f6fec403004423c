// LUSPO (length-unbiased GSPO, TRL loss_type "luspo"), four ways.
#include "policy/policy_support.hpp"

#include <rlpo/policy/luspo.hpp>
#include <rlpo/policy/policy_loss.hpp>

using namespace policy_test;
using rlpo::policy::LUSPOOptions;

namespace {
std::vector<LUSPOOptions> option_sets() {
    LUSPOOptions wide = LUSPOOptions::trl(0.2, 0.28);  // most rows inside the clip range
    LUSPOOptions paper;                                // ε 2e-3 / 2.5e-3: most rows clipped
    LUSPOOptions mid = LUSPOOptions::trl(0.05, 0.1);
    return {wide, paper, mid};
}
/// Rows whose sequence ratio is within the FD step of a clip bound are skipped.
std::function<bool(Index)> near_kink(const Batch& b, const LUSPOOptions& o) {
    std::vector<bool> row_kink(static_cast<std::size_t>(b.logp.rows()), false);
    for (Index i = 0; i < b.logp.rows(); ++i) {
        const double len = b.mask.row(i).sum();
        if (len == 0) continue;
        const double ls =
            (b.mask.row(i).array() * (b.logp.row(i) - b.old.row(i)).array()).sum() / len;
        const double s = std::exp(ls);
        row_kink[static_cast<std::size_t>(i)] =
            std::abs(s - (1 - o.clip_low)) < 1e-4 || std::abs(s - (1 + o.clip_high)) < 1e-4;
    }
    const Index T = b.logp.cols();
    return [row_kink, T](Index k) {
        return static_cast<bool>(row_kink[static_cast<std::size_t>(k / T)]);
    };
}
}  // namespace

TEST_CASE("luspo: gradient equals central finite differences", "[policy][luspo][fd]") {
    for (const auto& opts : option_sets())
        for (Aggregation mode : rlpo_test::all_modes()) {
            LUSPOOptions o = opts;
            if (mode == Aggregation::TokenMean) o.aggregation = std::nullopt;  // caller's mode too
            const Batch b = spread_batch(31 + static_cast<std::uint64_t>(mode), 8, 12, 0.01, false,
                                         mode != Aggregation::TokenSum);
            const rlpo::Normalizer n = norm_for(mode, 2);
            rlpo::policy::TokenWeights<double> w;
            if (mode == Aggregation::SeqMeanTokenMean) w.emplace(b.w);
            const auto r = rlpo::policy::luspo(b.logp, b.old, b.adv, b.mask, o, n, {}, w);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::luspo(x, b.old, b.adv, b.mask, o, n,
                                               rlpo::no_grad<double>(), w)
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-10, near_kink(b, o));
        }
}

TEMPLATE_TEST_CASE("luspo: agrees with the PyTorch autograd reference (TRL's formula)",
                   "[policy][luspo][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy", std::string("luspo_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, adv, mask, w;
        LUSPOOptions o;
        rlpo::Normalizer norm;
        bool weighted;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 900;
    for (const auto& o : option_sets())
        for (int variant = 0; variant < 4; ++variant) {
            // TRL's advantages are per sequence: row-constant here; small log-ratios so that the
            // sequence ratios fall on both sides of the clip range
            const Batch b = spread_batch(seed++, 8, 12, 0.01, false, true);
            rlpo::Normalizer n;
            n.mode = Aggregation::TokenMean;      // replaced by the forced seq-mean-token-sum
            if (variant == 1) n.num_seqs = 8.0;   // TRL: .mean() over all B rows, empty ones too
            if (variant == 2) n.num_seqs = 50.0;  // a global count (micro-batches)
            Run r{b.logp.cast<S>(),
                  b.old.cast<S>(),
                  b.adv.cast<S>(),
                  b.mask.cast<S>(),
                  b.w.cast<S>(),
                  o,
                  n,
                  variant == 3};
            r.mask(2, 3) = 0;
            r.logp(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& c = ref.add<S>("luspo");
            c.in("logp", r.logp).in("old_logp", r.old).in("advantages", r.adv).in("mask", r.mask);
            if (r.weighted) c.in("is_weights", r.w);
            c.p("clip_low", o.clip_low).p("clip_high", o.clip_high);
            if (n.num_seqs) c.p("num_seqs", *n.num_seqs);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        rlpo::policy::TokenWeights<S> w;
        if (r.weighted) w.emplace(r.w);
        const auto res = rlpo::policy::luspo(r.logp, r.old, r.adv, r.mask, r.o, r.norm, {}, w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        for (const char* name : {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"}) {
            INFO(name);
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(k, name), 1e-12) < tol);
        }
    }
}

TEST_CASE("luspo: properties", "[policy][luspo][properties]") {
    SECTION(
        "closed form: rows of length 2 and 5 with the same ratio and advantage get the same "
        "per-token gradient −A·s (GSPO's is −A·s/|y|), and the value Σ|y|·(−A·s)/N_seq") {
        Mat<double> lp = Mat<double>::Zero(2, 5), old = Mat<double>::Zero(2, 5);
        Mat<double> m = Mat<double>::Zero(2, 5), a = Mat<double>::Constant(2, 5, 1.5);
        lp(0, 0) = 0.003;
        lp(0, 1) = -0.001;  // row 0: mean log-ratio 0.001 over 2 tokens
        m(0, 0) = m(0, 1) = 1;
        for (Index t = 0; t < 5; ++t) {
            lp(1, t) = 0.001 + (t - 2) * 0.002;  // row 1: mean 0.001 over 5 tokens
            m(1, t) = 1;
        }
        lp(0, 4) = 7.0;                    // masked: never read
        const double s = std::exp(0.001);  // inside [1 − 2e-3, 1 + 2.5e-3]
        const auto r = rlpo::policy::luspo(lp, old, a, m);
        CHECK(r.value == Approx((2 + 5) * (-1.5 * s) / 2).epsilon(1e-13));
        for (Index i = 0; i < 2; ++i)
            for (Index t = 0; t < 5; ++t)
                CHECK(r.grad(i, t) == Approx(m(i, t) * -1.5 * s / 2).margin(1e-15));
        CHECK(r.metrics["pg_clipfrac"] == 0.0);
        CHECK(r.metrics["ppo_kl"] == Approx(-(0.002 + 5 * 0.001) / 7).epsilon(1e-12));
    }
    SECTION("TRL's normalisation: an empty row counts in the mean when num_seqs = B") {
        Mat<double> lp(3, 2), old = Mat<double>::Zero(3, 2), a(3, 2);
        lp << 0.5, 0.5, 0.0, 0.0, -0.5, -0.5;  // s = e^0.5 (clipped above), 1, e^−0.5 (below)
        a << 1.0, 1.0, -2.0, -2.0, 3.0, 3.0;
        Mat<double> m = Mat<double>::Ones(3, 2);
        m.row(1).setZero();
        const LUSPOOptions o = LUSPOOptions::trl(0.2, 0.2);
        rlpo::Normalizer n;
        n.num_seqs = 3.0;
        // row 0: A > 0, s > 1.2 → −A·1.2 (clipped, no gradient); row 2: A > 0, s < 0.8 →
        // max(−3s, −3·0.8) = −3s (unclipped)
        const double s2 = std::exp(-0.5);
        const auto r = rlpo::policy::luspo(lp, old, a, m, o, n);
        CHECK(r.value == Approx((2 * (-1.2) + 2 * (-3 * s2)) / 3).epsilon(1e-13));
        CHECK(r.grad(0, 0) == 0.0);
        CHECK(r.grad(1, 0) == 0.0);
        CHECK(r.grad(2, 0) == Approx(-3 * s2 / 3).epsilon(1e-13));
        CHECK(r.metrics["pg_clipfrac"] == Approx(0.5));            // row 0's two tokens of four
        const auto local = rlpo::policy::luspo(lp, old, a, m, o);  // N_seq = 2 non-empty rows
        CHECK(local.value == Approx(r.value * 3 / 2).epsilon(1e-13));
    }
    SECTION("equals GSPO (sequence level, no cap) aggregated seq-mean-token-sum") {
        const Batch b = spread_batch(41, 8, 12, 0.05, false, true);
        rlpo::policy::GSPOOptions g = rlpo::policy::GSPOOptions::trl(0.05, 0.1);
        rlpo::Normalizer n;
        n.mode = Aggregation::SeqMeanTokenSum;
        const auto x = rlpo::policy::gspo(b.logp, b.old, b.adv, b.mask, g, n);
        const auto y =
            rlpo::policy::luspo(b.logp, b.old, b.adv, b.mask, LUSPOOptions::trl(0.05, 0.1));
        CHECK(x.value == y.value);
        CHECK(x.grad == y.grad);
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Batch b = spread_batch(42, 8, 12, 0.05, false, true);
        for (auto o : option_sets()) {
            o.aggregation = std::nullopt;  // every mode
            require_micro_batch_invariance(
                [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                    return rlpo::policy::luspo(b.logp.middleRows(r0, nr), b.old.middleRows(r0, nr),
                                               b.adv.middleRows(r0, nr), b.mask.middleRows(r0, nr),
                                               o, n);
                },
                b.mask);
        }
    }
    SECTION("the registry: 'luspo' parses, takes its presets and dispatches to luspo") {
        const Batch b = spread_batch(43, 6, 10, 0.05, false, true);
        CHECK(rlpo::policy::parse_policy_loss("luspo") == rlpo::policy::PolicyLoss::LUSPO);
        CHECK(std::string(rlpo::policy::to_string(rlpo::policy::PolicyLoss::LUSPO)) == "luspo");
        auto o = rlpo::policy::make_policy_loss("luspo", rlpo::policy::Anchor::TRL);
        CHECK(o.luspo.clip_low == 2e-3);
        CHECK(o.luspo.clip_high == 2.5e-3);
        o.luspo.clip_high = 0.1;
        rlpo::policy::TokenWeights<double> w;
        w.emplace(b.w);
        const auto x = rlpo::policy::policy_loss(o, b.logp, b.old, b.adv, b.mask, {}, {}, w);
        const auto y = rlpo::policy::luspo(b.logp, b.old, b.adv, b.mask, o.luspo, {}, {}, w);
        CHECK(x.value == y.value);
        CHECK(x.grad == y.grad);
    }
}

TEST_CASE("luspo: bad input gives the documented error", "[policy][luspo][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::luspo(x, y, x, m),
        "policy::luspo(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(x, x, y, m), "advantages: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(x, x, x, y), "mask: expected shape");
    LUSPOOptions o;
    o.clip_low = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(x, x, x, m, o),
                                    "policy::luspo(): clip_low: must be > 0");
    o = {};
    o.clip_high = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(x, x, x, m, o), "clip_high: must be > 0");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(bad, x, x, m),
                                    "policy::luspo(): logp: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(x, x, bad, m), "advantages: NaN at [1, 2]");
    Mat<double> mixed = x;
    mixed(0, 0) = std::numeric_limits<double>::infinity();
    mixed(0, 1) = -std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(mixed, x, x, m),
                                    "undefined (NaN) sequence log-ratio");
    rlpo::policy::TokenWeights<double> w;
    const Mat<double> negative = Mat<double>::Constant(2, 3, -1.0);
    w.emplace(negative);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::luspo(x, x, x, m, {}, {}, {}, w),
                                    "is_weights: entries under a non-zero mask must be finite");
    const auto empty = rlpo::policy::luspo(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
    CHECK(empty.metrics["pg_clipfrac"] == 0.0);
}
