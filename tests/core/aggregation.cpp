// Aggregation modes: definitions, the external normalizer, micro-batch invariance, bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/core/aggregation.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
namespace rt = rlpo::testing;

namespace {
// The modes written from their textbook definitions, row by row.
double by_definition(const Mat<double>& L, const Mat<double>& m, Aggregation mode, double C) {
    double tok = 0, seqs = 0;
    for (Index i = 0; i < m.rows(); ++i) {
        tok += m.row(i).sum();
        seqs += m.row(i).sum() > 0 ? 1 : 0;
    }
    double total = 0;
    if (mode == Aggregation::TokenMean || mode == Aggregation::TokenSum) {
        for (Index k = 0; k < L.size(); ++k)
            if (m.data()[k] != 0) total += L.data()[k] * m.data()[k];
        return mode == Aggregation::TokenMean ? (tok > 0 ? total / tok : 0.0) : total;
    }
    for (Index i = 0; i < L.rows(); ++i) {
        double row = 0, len = 0;
        for (Index t = 0; t < L.cols(); ++t)
            if (m(i, t) != 0) {
                row += L(i, t) * m(i, t);
                len += m(i, t);
            }
        if (len == 0) continue;
        if (mode == Aggregation::SeqMeanTokenMean) row /= len;
        total += row;
    }
    if (seqs == 0) return 0.0;
    if (mode == Aggregation::SeqMeanTokenSumNorm) return total / (seqs * C);
    return total / seqs;
}
}  // namespace

TEST_CASE("each aggregation mode equals its definition, masked entries never read",
          "[core][aggregation]") {
    rt::Generator gen(3);
    Mat<double> L = gen.normal(6, 10);
    const Mat<double> m = gen.mask(6, 10, 1, /*empty_rows=*/true);
    for (Index k = 0; k < L.size(); ++k)
        if (m.data()[k] == 0) L.data()[k] = std::numeric_limits<double>::quiet_NaN();
    for (Aggregation mode : rlpo_test::all_modes()) {
        INFO(rlpo::to_string(mode));
        rlpo::Normalizer n;
        n.mode = mode;
        Mat<double> gL;
        const double v = rlpo::aggregate(L, m, n, &gL);
        CHECK(v == Approx(by_definition(L, m, mode, 10.0)).epsilon(1e-14));
        CHECK(std::isfinite(gL.sum()));
        // ∂/∂L by finite differences on the unmasked entries (the map is linear: exact).
        Mat<double> L0 = L;
        for (Index k = 0; k < L0.size(); ++k)
            if (m.data()[k] == 0) L0.data()[k] = 0;
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) { return rlpo::aggregate(x, m, n); }, L0, gL, 1e-7, 1e-10);
        n.norm_constant = 37.0;
        if (mode == Aggregation::SeqMeanTokenSumNorm)
            CHECK(rlpo::aggregate(L, m, n) ==
                  Approx(by_definition(L, m, mode, 37.0)).epsilon(1e-14));
    }
}

TEST_CASE("empty mask gives value 0 and gradient 0 in every mode", "[core][aggregation]") {
    const Mat<double> L = Mat<double>::Ones(3, 4);
    const Mat<double> m = Mat<double>::Zero(3, 4);
    for (Aggregation mode : rlpo_test::all_modes()) {
        rlpo::Normalizer n;
        n.mode = mode;
        Mat<double> g;
        CHECK(rlpo::aggregate(L, m, n, &g) == 0.0);
        CHECK(g.isZero());
        const auto r = rlpo::policy::ppo_clip(L, L, L, m, {}, n);
        CHECK(r.value == 0.0);
        CHECK(r.grad.isZero());
        CHECK(r.metrics["pg_clipfrac"] == 0.0);
    }
}

TEMPLATE_TEST_CASE(
    "micro-batch invariance: uneven splits with global counts sum to the whole batch",
    "[core][aggregation]", float, double) {
    using S = TestType;
    rt::Generator gen(11);
    const Index B = 15, T = 12;  // chunks 1,2,3,4,5
    const Mat<S> logp = gen.logprobs<S>(B, T);
    const Mat<S> old = gen.perturbed<S>(logp, 0.3);
    const Mat<S> adv = gen.normal<S>(B, T);
    const Mat<S> mask = gen.mask<S>(B, T, 1, true);
    const auto opts = rlpo::policy::PPOClipOptions::verl();
    for (Aggregation mode : rlpo_test::all_modes()) {
        INFO(rlpo::to_string(mode));
        const rlpo::Normalizer n = rlpo_test::global_normalizer(mode, mask);
        const auto whole = rlpo::policy::ppo_clip(logp, old, adv, mask, opts, n);
        double sum = 0;
        Mat<S> grad(B, T);
        rlpo::Metrics metrics;
        for (auto [start, len] : rlpo_test::uneven_chunks(B)) {
            // Micro-batches are row blocks viewed in place (strided Refs are fine too).
            const auto part = rlpo::policy::ppo_clip(
                logp.middleRows(start, len), old.middleRows(start, len), adv.middleRows(start, len),
                mask.middleRows(start, len), opts, n);
            sum += part.value;
            grad.middleRows(start, len) = part.grad;
            metrics.merge(part.metrics);
        }
        if (sizeof(S) == 8) {
            CHECK(sum == Approx(whole.value).epsilon(1e-14));        // exact up to summation order
            CHECK(rlpo_test::max_rel_err(grad, whole.grad) == 0.0);  // per-token: bitwise
        } else {
            CHECK(sum == Approx(whole.value).epsilon(1e-6));
            CHECK(rlpo_test::max_rel_err(grad, whole.grad) == 0.0);
        }
        for (const auto& e : whole.metrics)
            CHECK(metrics[e.first] == Approx(e.second.value()).epsilon(1e-14));
        // The plain aggregation too.
        const Mat<double> L = adv.template cast<double>();
        const Mat<double> md = mask.template cast<double>();
        double asum = 0;
        for (auto [start, len] : rlpo_test::uneven_chunks(B))
            asum += rlpo::aggregate(L.middleRows(start, len), md.middleRows(start, len), n);
        CHECK(asum == Approx(rlpo::aggregate(L, md, n)).epsilon(1e-14));
    }
}

TEST_CASE("without global counts, micro-batches normalise locally (the bug being designed out)",
          "[core][aggregation]") {
    rt::Generator gen(5);
    const Mat<double> L = gen.normal(6, 8);
    Mat<double> m = gen.mask(6, 8, 1);
    m.row(0).setOnes();
    m.row(5).setZero();
    m(5, 0) = 1;  // very uneven token counts
    rlpo::Normalizer local;
    const double whole = rlpo::aggregate(L, m, local);
    const double parts = rlpo::aggregate(L.topRows(3), m.topRows(3), local) +
                         rlpo::aggregate(L.bottomRows(3), m.bottomRows(3), local);
    CHECK(std::abs(parts - whole) > 1e-3);
}

TEST_CASE("Normalizer::verl reproduces verl's agg_loss and masked_mean", "[core][aggregation]") {
    // verl/trainer/ppo/core_algos.py agg_loss, written from its code: token-mean Σ mL / Σ m;
    // seq-mean-token-sum Σ_i row_i / N_seq; seq-mean-token-mean Σ_i row_i / (|y_i| + 1e-8) /
    // N_seq; seq-mean-token-sum-norm Σ_i row_i / C (no mean over rows). Short rows make the
    // 1e-8 visible far above rounding (≈ 1e-9 relative).
    rt::Generator gen(41);
    const Mat<double> L = (gen.normal(7, 5).array().abs() + 0.5).matrix();  // no cancellation
    const Mat<double> m = gen.mask(7, 5, 1, /*empty_rows=*/true);
    const double C = 9.0;
    double tok = 0, seqs = 0, sum_all = 0, mean_rows = 0, sum_rows = 0;
    for (Index i = 0; i < m.rows(); ++i) {
        const double len = m.row(i).sum();
        double row = 0;
        for (Index t = 0; t < m.cols(); ++t) row += m(i, t) * L(i, t);
        tok += len;
        seqs += len > 0 ? 1 : 0;
        sum_all += row;
        sum_rows += len > 0 ? row : 0.0;
        mean_rows += len > 0 ? row / (len + 1e-8) : 0.0;
    }
    REQUIRE(seqs >= 2);
    const auto verl = [&](Aggregation mode) {
        rlpo::Normalizer n = rlpo::Normalizer::verl(mode);
        n.norm_constant = C;
        return rlpo::aggregate(L, m, n);
    };
    CHECK(verl(Aggregation::TokenMean) == Approx(sum_all / tok).epsilon(1e-14));
    CHECK(verl(Aggregation::SeqMeanTokenSum) == Approx(sum_rows / seqs).epsilon(1e-14));
    CHECK(verl(Aggregation::SeqMeanTokenMean) == Approx(mean_rows / seqs).epsilon(1e-14));
    CHECK(verl(Aggregation::SeqMeanTokenSumNorm) == Approx(sum_all / C).epsilon(1e-14));
    // the exact division differs from verl's by far more than rounding
    rlpo::Normalizer exact{Aggregation::SeqMeanTokenMean};
    CHECK(std::abs(rlpo::aggregate(L, m, exact) / (mean_rows / seqs) - 1) > 1e-11);
    // masked_mean: a policy metric is Σ m·x / (Σ m + 1e-8); ppo_kl = mean of old − logp
    const Mat<double> lp = gen.logprobs(7, 5), adv = gen.normal(7, 5);  // old > lp: no cancellation
    const Mat<double> old = (lp.array() + 0.1 * gen.normal(7, 5).array().abs() + 0.01).matrix();
    double kl = 0;
    for (Index k = 0; k < m.size(); ++k) kl += m.data()[k] * (old.data()[k] - lp.data()[k]);
    const auto r = rlpo::policy::ppo_clip(lp, old, adv, m, rlpo::policy::PPOClipOptions::verl(),
                                          rlpo::Normalizer::verl());
    CHECK(r.metrics["ppo_kl"] == Approx(kl / (tok + 1e-8)).epsilon(1e-14));
    CHECK(std::abs(r.metrics["ppo_kl"] / (kl / tok) - 1) > 1e-11);
    // plain metrics never get the ε; merged parts keep it
    rlpo::Metrics a;
    a.add("x", 3.0, 4.0);
    a.set("coef", 0.5);
    a.with_count_epsilon(1e-8);
    CHECK(a["x"] == 3.0 / (4.0 + 1e-8));
    CHECK(a["coef"] == 0.5);
    rlpo::Metrics merged;
    merged.merge(a);
    CHECK(merged["x"] == 3.0 / (4.0 + 1e-8));
}

TEST_CASE("aggregation names and bad normalizers", "[core][aggregation][bad-input]") {
    CHECK(rlpo::parse_aggregation("token-mean") == Aggregation::TokenMean);
    CHECK(rlpo::parse_aggregation("grpo") == Aggregation::SeqMeanTokenMean);
    CHECK(rlpo::parse_aggregation("dr_grpo") == Aggregation::SeqMeanTokenSumNorm);
    CHECK(rlpo::parse_aggregation("dapo") == Aggregation::TokenMean);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::parse_aggregation("mean"), "valid names: token-mean");
    const Mat<double> L = Mat<double>::Ones(2, 3);
    Mat<double> m = Mat<double>::Ones(2, 3);
    rlpo::Normalizer n;
    n.num_tokens = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, m, n), "num_tokens: must be > 0");
    n = {};
    n.num_seqs = -1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, m, n), "num_seqs: must be > 0");
    n = {};
    n.norm_constant = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, m, n), "norm_constant");
    n = {};
    n.length_epsilon = -1e-8;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, m, n),
                                    "Normalizer::length_epsilon: must be >= 0");
    n = {};
    n.count_epsilon = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, m, n), "Normalizer::count_epsilon");
    m(1, 2) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, m), "mask: entries must be finite and >= 0");
    m(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, m), "at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::aggregate(L, Mat<double>::Ones(3, 3)),
                                    "mask: expected shape [2, 3]");
}
