// Aggregation modes: definitions, the external normalizer, micro-batch invariance, bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/token_pass.hpp>
#include <rlpo/critic/value_loss.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/policy/sapo.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

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

TEMPLATE_TEST_CASE("row extents: each row's end, and no input read or gradient left past it",
                   "[core][aggregation]", float, double) {
    using S = TestType;
    using rlpo::GradientOut;
    const S nan = std::numeric_limits<S>::quiet_NaN();
    // rows padded after 1, 31, 32, 33, 63, 64, 65, 99 and 100 of T = 100 tokens (around the
    // fast builder's blocks of 32 and every packet width), a hole, an empty row, fractions
    const Index T = 100;
    const std::vector<Index> lens = {1, 31, 32, 33, 63, 64, 65, 99, 100, 0, 40, 70};
    const auto B = static_cast<Index>(lens.size());
    Mat<S> m = Mat<S>::Zero(B, T);
    for (Index i = 0; i < B; ++i) m.row(i).head(lens[static_cast<std::size_t>(i)]).setOnes();
    m.block(10, 5, 1, 20).setZero();  // a hole inside row 10
    m.row(11).head(70) *= S(0.25);    // fractional weights
    m.block(11, 64, 1, 5).setZero();
    m(11, 69) = S(1e-30);  // its last entry, alone in its block of 32: tiny, not zero
    std::vector<Index> exact(static_cast<std::size_t>(B), 0);  // one past the last m > 0
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t)
            if (m(i, t) != 0) exact[static_cast<std::size_t>(i)] = t + 1;
    REQUIRE(exact[9] == 0);
    REQUIRE(exact[11] == 70);
    for (Aggregation mode : rlpo_test::all_modes()) {
        INFO(rlpo::to_string(mode));
        rlpo::Normalizer n;
        n.mode = mode;
        const rlpo::RowWeights w = rlpo::row_weights("t", m, n);
        const rlpo::RowWeights f = rlpo::detail::row_weights_fast<S>("t", m, n);
        for (Index i = 0; i < B; ++i) {
            const auto r = static_cast<std::size_t>(i);
            INFO("row " << i);
            CHECK(w.end[r] == exact[r]);
            // the fast builder: the end of the last block of 32 with an entry > 0
            CHECK(f.end[r] == std::min(T, (exact[r] + 31) / 32 * 32));
            CHECK(f.len[r] == w.len[r]);
            CHECK(f.c[r] == w.c[r]);
        }
        CHECK(f.local_tokens == w.local_tokens);
        CHECK(f.local_seqs == w.local_seqs);
    }
    if constexpr (sizeof(S) == 4) {
        // two float entries of 0.9·max in one block: its sum overflows float, so the fast
        // builder takes the exact path (double sums, exact extents); the counts stay finite
        Mat<S> big = m;
        big(3, 40) = big(3, 41) = S(0.9) * std::numeric_limits<S>::max();
        const rlpo::RowWeights w = rlpo::row_weights("t", big, rlpo::Normalizer{});
        const rlpo::RowWeights f = rlpo::detail::row_weights_fast<S>("t", big, rlpo::Normalizer{});
        CHECK(std::isfinite(w.len[3]));
        CHECK(f.len == w.len);
        CHECK(f.end == w.end);
        CHECK(f.local_tokens == w.local_tokens);
        const Mat<S> z = Mat<S>::Zero(B, T);
        const auto r = rlpo::policy::ppo_clip(z, z, z, big);
        CHECK(r.metrics.at("pg_clipfrac").count == w.local_tokens);
        CHECK(std::isfinite(r.metrics.at("pg_clipfrac").count));
    }
    // Every token pass (vectorised: PPO clip, KL, value loss; scalar: SAPO) with NaN in every
    // input past each row's end: the result is that of finite inputs there, bit for bit; an
    // overwritten gradient is exactly 0 there, an added one untouched.
    rt::Generator gen(29);
    const Mat<S> lp = gen.logprobs<S>(B, T), old = gen.perturbed<S>(lp, 0.3),
                 ref = gen.perturbed<S>(lp, 0.5), adv = gen.normal<S>(B, T);
    const Mat<S> v = gen.normal<S>(B, T), vo = gen.perturbed<S>(v, 0.3), R = gen.normal<S>(B, T);
    const auto poisoned = [&](Mat<S> x) {
        for (Index i = 0; i < B; ++i)
            for (Index t = exact[static_cast<std::size_t>(i)]; t < T; ++t) x(i, t) = nan;
        return x;
    };
    using Call = std::function<rlpo::Result<S>(const Mat<S>&, const Mat<S>&, const Mat<S>&,
                                               const Mat<S>&, const GradientOut<S>&)>;
    const rlpo::Normalizer n;
    const std::vector<std::pair<std::string, Call>> calls = {
        {"ppo_clip",
         [&](const Mat<S>& a, const Mat<S>& b, const Mat<S>& c, const Mat<S>& mk,
             const GradientOut<S>& out) {
             return rlpo::policy::ppo_clip(a, b, c, mk, rlpo::policy::PPOClipOptions::verl(), n,
                                           out);
         }},
        {"kl_penalty",
         [&](const Mat<S>& a, const Mat<S>& b, const Mat<S>&, const Mat<S>& mk,
             const GradientOut<S>& out) {
             return rlpo::penalties::kl_penalty(a, b, mk, rlpo::penalties::KLOptions::verl(), n,
                                                out);
         }},
        {"value_loss",
         [&](const Mat<S>& a, const Mat<S>& b, const Mat<S>& c, const Mat<S>& mk,
             const GradientOut<S>& out) {
             rlpo::critic::ValueLossOptions o;
             o.clip = 0.2;
             return rlpo::critic::value_loss(a, b, c, mk, o, n, out);
         }},
        {"sapo (scalar pass)",
         [&](const Mat<S>& a, const Mat<S>& b, const Mat<S>& c, const Mat<S>& mk,
             const GradientOut<S>& out) { return rlpo::policy::sapo(a, b, c, mk, {}, n, out); }},
    };
    for (const auto& [name, call] : calls) {
        INFO(name);
        const bool values = name == "value_loss";
        const Mat<S>& x0 = values ? v : lp;
        const Mat<S>& x1 = values ? vo : (name == "kl_penalty" ? ref : old);
        const Mat<S>& x2 = values ? R : adv;
        const auto clean = call(x0, x1, x2, m, {});
        const Mat<S> p0 = poisoned(x0), p1 = poisoned(x1), p2 = poisoned(x2);
        const auto dirty = call(p0, p1, p2, m, {});
        CHECK(dirty.value == clean.value);
        CHECK(rlpo_test::max_rel_err(dirty.grad, clean.grad) == 0.0);
        // the same tokens in reverse order end every row at T (nothing to skip): the same
        // per-token gradient, the same value up to summation order
        const auto rev = [](const Mat<S>& x) { return Mat<S>(x.rowwise().reverse()); };
        const auto flipped = call(rev(x0), rev(x1), rev(x2), rev(m), {});
        CHECK(rlpo_test::max_rel_err(rev(flipped.grad), clean.grad) == 0.0);
        CHECK(flipped.value == Approx(clean.value).epsilon(sizeof(S) == 4 ? 1e-5 : 1e-13));
        Mat<S> wbuf = Mat<S>::Constant(B, T, nan), abuf = Mat<S>::Constant(B, T, S(3));
        call(p0, p1, p2, m, rlpo::write_to<S>(wbuf));
        call(p0, p1, p2, m, rlpo::add_to<S>(abuf));
        for (Index i = 0; i < B; ++i)
            for (Index t = 0; t < T; ++t) {
                if (m(i, t) != 0) continue;
                if (wbuf(i, t) != S(0) || abuf(i, t) != S(3)) {
                    FAIL_CHECK("masked [" << i << ", " << t << "]: written " << wbuf(i, t)
                                          << ", added " << abuf(i, t));
                }
            }
        CHECK(std::isfinite(static_cast<double>(wbuf.sum())));
    }
}
