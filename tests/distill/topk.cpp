// Top-k teacher forward KL (bucket / renormalise tail rules) and DAC-KL as top-p restricted KL:
// finite differences, PyTorch autograd (float, double, bf16), properties, bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/core/math.hpp>
#include <rlpo/distill/divergences.hpp>
#include <rlpo/distill/topk.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::DacKLOptions;
using rlpo::distill::TopKOptions;
using rlpo::distill::TopKTail;
namespace rt = rlpo::testing;
using bf16 = Eigen::bfloat16;
constexpr double inf = std::numeric_limits<double>::infinity();

namespace {
struct TopK {
    Mat<double> z, idx, lp, mask, y;
};

// Teacher logits y; its top-k entries (log-softmax) as the stored teacher. One teacher
// log-prob is −inf (a zero-probability stored entry); one masked row holds garbage.
TopK make_topk(std::uint64_t seed, Index B, Index T, Index V, Index k) {
    rt::Generator gen(seed);
    TopK c;
    c.z = gen.logits(B * T, V, 1.5);
    c.y = gen.logits(B * T, V, 2.5);
    const Mat<double> lpf = rlpo::log_softmax_rows(c.y);
    c.idx.resize(B * T, k);
    c.lp.resize(B * T, k);
    for (Index n = 0; n < B * T; ++n) {
        std::vector<Index> order(static_cast<std::size_t>(V));
        std::iota(order.begin(), order.end(), Index(0));
        std::sort(order.begin(), order.end(),
                  [&](Index a, Index b) { return lpf(n, a) > lpf(n, b); });
        for (Index t = 0; t < k; ++t) {
            c.idx(n, t) = static_cast<double>(order[static_cast<std::size_t>(t)]);
            c.lp(n, t) = lpf(n, order[static_cast<std::size_t>(t)]);
        }
    }
    c.lp(0, k - 1) = -inf;
    c.mask = gen.mask(B, T, 1, false);
    c.mask(0, 0) = 1;
    for (Index n = 0; n < B * T; ++n)
        if (c.mask(n / T, n % T) == 0) {
            c.idx(n, 0) = -7;
            c.lp(n, 1) = std::numeric_limits<double>::quiet_NaN();
            c.z(n, 2) = std::numeric_limits<double>::quiet_NaN();
            break;
        }
    return c;
}

}  // namespace

// The central difference's own rounding: the values are O(τ²) = O(4), so one ulp of the value
// over the 2h ≈ 2e-6 step is ≈ 1e-9 already; 1e-8 stays far below any real gradient error
// (entries are O(0.1)).
constexpr double kFdAtol = 1e-8;

TEST_CASE("top-k forward KL and DAC-KL: gradient equals central finite differences",
          "[distill][topk][fd]") {
    std::uint64_t seed = 40;
    for (TopKTail tail : {TopKTail::Bucket, TopKTail::Renormalize})
        for (double tau : {1.0, 2.0})
            for (Aggregation mode : rlpo_test::all_modes()) {
                INFO((tail == TopKTail::Bucket ? "bucket" : "renormalize")
                     << " tau " << tau << " " << rlpo::to_string(mode));
                const TopK c = make_topk(seed++, 3, 2, 9, 4);
                TopKOptions o;
                o.tail = tail;
                o.temperature = tau;
                o.temperature_squared = tau > 1;
                rlpo::Normalizer n;
                n.mode = mode;
                const auto r = rlpo::distill::forward_kl_topk(c.z, c.idx, c.lp, c.mask, o, n);
                const auto skip = [&](Index k) {
                    const Index row = k / c.z.cols();
                    return c.mask(row / 2, row % 2) == 0;
                };
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        return rlpo::distill::forward_kl_topk(x, c.idx, c.lp, c.mask, o, n,
                                                              rlpo::no_grad<double>())
                            .value;
                    },
                    c.z, r.grad, 1e-6, kFdAtol, skip);
                DacKLOptions d;
                d.top_p = 0.7;
                d.temperature = tau;
                const auto rd = rlpo::distill::dac_kl(c.z, c.y, c.mask, d, n);
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        return rlpo::distill::dac_kl(x, c.y, c.mask, d, n, rlpo::no_grad<double>())
                            .value;
                    },
                    c.z, rd.grad, 1e-6, kFdAtol, skip);
            }
}

TEMPLATE_TEST_CASE("top-k forward KL and DAC-KL: agree with the PyTorch autograd reference",
                   "[distill][topk][torch]", float, double, bf16) {
    using S = TestType;
    const std::string tag =
        std::is_same<S, double>::value ? "d" : (std::is_same<S, float>::value ? "f" : "b");
    rlpo_test::TorchReference tr("distill", "topk_" + tag);
    struct Run {
        Mat<S> z, y;
        Mat<double> idx, lp, mask;
        int kind;  // 0 bucket, 1 renormalize, 2 dac
        TopKOptions o;
        DacKLOptions d;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 900;
    for (int kind = 0; kind < 3; ++kind)
        for (int variant = 0; variant < 3; ++variant) {
            // bf16 rounding of 500 logits makes ties at the top-p boundary, where the region
            // (and so the value) depends on the tie order: DAC-KL in bf16 uses V = 13 only.
            if (kind == 2 && variant == 2 && std::is_same<S, bf16>::value) continue;
            const Index V = variant == 2 ? 500 : 13, k = variant == 2 ? 20 : 5;
            const TopK c = make_topk(seed++, 3, 3, V, k);
            Run r;
            r.z = c.z.template cast<S>();
            r.y = c.y.template cast<S>();
            r.idx = c.idx;
            r.lp = c.lp;
            r.mask = c.mask;
            r.kind = kind;
            r.o.tail = kind == 0 ? TopKTail::Bucket : TopKTail::Renormalize;
            r.o.temperature = r.d.temperature = variant == 1 ? 1.7 : 1.0;
            r.o.temperature_squared = r.d.temperature_squared = variant == 1;
            r.d.top_p = variant == 0 ? 0.5 : 0.9;
            r.n.mode = variant == 1 ? Aggregation::SeqMeanTokenMean : Aggregation::TokenMean;
            auto& tc = tr.add<S>(kind == 2 ? "dac_kl" : "forward_kl_topk");
            tc.in("student", r.z).in("mask", r.mask);
            if (kind == 2)
                tc.in("teacher", r.y).p("top_p", r.d.top_p);
            else
                tc.in("idx", r.idx).in("lp", r.lp).s("tail", kind == 0 ? "bucket" : "renormalize");
            tc.p("temperature", r.o.temperature).p("tsq", r.o.temperature_squared ? 1.0 : 0.0);
            tc.s("agg", rlpo::to_string(r.n.mode));
            runs.push_back(std::move(r));
        }
    tr.run();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const auto& r = runs[i];
        INFO("case " << i << " kind " << r.kind);
        const auto res = r.kind == 2
                             ? rlpo::distill::dac_kl(r.z, r.y, r.mask, r.d, r.n)
                             : rlpo::distill::forward_kl_topk(r.z, r.idx, r.lp, r.mask, r.o, r.n);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value"), 1e-6) <
              (sizeof(S) == 8 ? 1e-10 : 2e-5));
        CHECK(rlpo_test::grad_err<S>(res.grad.template cast<double>(), tr.out(i, "grad")) <
              rlpo_test::grad_tol<S>());
        CHECK(rlpo_test::rel_err(res.metrics["forward_kl"], tr.scalar(i, "metric"), 1e-6) <
              (sizeof(S) == 8 ? 1e-10 : 2e-5));
        if (r.kind == 2) {
            CHECK(res.metrics["dac_region_size"] == Approx(tr.scalar(i, "size")));
        } else {
            CHECK(res.metrics["teacher_topk_mass"] == Approx(tr.scalar(i, "mass")).epsilon(1e-9));
        }
    }
}

// A row whose tail (the entries outside K) lies 1800 nats and more below its maximum (τ = 1e-3,
// a 1.8 logit gap): q_t = e^{-1800} underflows float and double alike (and the vectorised
// exp's clamp raised it to ~1e-36 on some machines, which gave a ±inf gradient). The value is
// the closed form in long double log space; the gradient central differences of the double
// value; float agrees with double.
TEST_CASE("top-k forward KL: a tail far below the row's maximum stays finite and exact",
          "[distill][topk][accuracy]") {
    const std::vector<double> row = {-1.98, -14.2, -1e30, -1.84, 0.0,  -1.89,
                                     -116., -1.81, -3.0,  -15.6, -1.92};
    const Index V = static_cast<Index>(row.size());
    Mat<double> z(1, V);
    for (Index j = 0; j < V; ++j) z(0, j) = row[static_cast<std::size_t>(j)];
    Mat<double> idx(1, 2), lp(1, 2);
    idx << 4, 8;  // the maximum and one entry below the tail
    lp << std::log(0.3), std::log(0.04);
    const Mat<double> m = Mat<double>::Ones(1, 1);
    TopKOptions o;
    o.temperature = 1e-3;
    // closed form: log q_j = z_j/τ − lse(z/τ), q_t = Σ_{j∉K} q_j in log space
    using LD = long double;
    const auto lse = [&](bool tail_only) {
        LD mx = -std::numeric_limits<LD>::infinity();
        for (Index j = 0; j < V; ++j)
            if (!tail_only || (j != 4 && j != 8)) mx = std::max(mx, LD(z(0, j)) / LD(1e-3));
        LD s = 0;
        for (Index j = 0; j < V; ++j)
            if (!tail_only || (j != 4 && j != 8)) s += std::exp(LD(z(0, j)) / LD(1e-3) - mx);
        return mx + std::log(s);
    };
    const LD ls = lse(false), lqt = lse(true) - ls;
    const LD pt = 1 - LD(0.3) - LD(0.04);
    LD L = pt * (std::log(pt) - lqt);
    for (Index t = 0; t < 2; ++t) {
        const Index j = static_cast<Index>(idx(0, t));
        L += std::exp(LD(lp(0, t))) * (LD(lp(0, t)) - (LD(z(0, j)) / LD(1e-3) - ls));
    }
    REQUIRE(std::isfinite(static_cast<double>(L)));
    REQUIRE(L > 1000);  // the tail's e^{-1800}: far from 0 and from inf
    const auto rd = rlpo::distill::forward_kl_topk(z, idx, lp, m, o);
    CHECK(rd.value == Approx(static_cast<double>(L)).epsilon(1e-12));
    REQUIRE(rd.grad.allFinite());
    rlpo_test::require_fd_gradient(
        [&](const Mat<double>& x) {
            return rlpo::distill::forward_kl_topk(x, idx, lp, m, o, {}, rlpo::no_grad<double>())
                .value;
        },
        z, rd.grad, 1e-4, 1e-3);
    // the tail's gradient is −p_t/τ times the tail softmax: its entries sum to q_t/τ − p_t/τ
    double tail_sum = 0;
    for (Index j = 0; j < V; ++j)
        if (j != 4 && j != 8) tail_sum += rd.grad(0, j);
    CHECK(tail_sum == Approx(-static_cast<double>(pt) / 1e-3).epsilon(1e-12));
    // a tail 540 nats down (q_t = e^{-540}: no underflow in double, p_t/q_t = 1e235) under a
    // row weight of 1e300 (num_tokens = 1e-300): K's entry is (q_k − p_k)/τ times the weight,
    // finite, never a ±1e538 tail term cancelled by a correction (inf − inf = NaN before)
    {
        Mat<double> z2(1, 5), i2(1, 1), l2(1, 1);
        z2 << 1.3, 0.76, -2.0, -0.12, -16.0;
        i2 << 0;
        l2 << -0.8625;
        const auto r1 = rlpo::distill::forward_kl_topk(z2, i2, l2, m, o);
        rlpo::Normalizer big;
        big.num_tokens = 1e-300;
        const auto r2 = rlpo::distill::forward_kl_topk(z2, i2, l2, m, o, big);
        REQUIRE(r2.grad.allFinite());
        CHECK(r1.grad(0, 0) == Approx((1 - std::exp(-0.8625)) / 1e-3).epsilon(1e-12));
        CHECK(rlpo_test::max_rel_err(r2.grad, Mat<double>(r1.grad * 1e300)) < 1e-12);
    }
    const Mat<float> zf = z.cast<float>(), lpf = lp.cast<float>();
    const auto rf = rlpo::distill::forward_kl_topk(zf, idx, lpf, m.cast<float>(), o);
    CHECK(rf.value == Approx(rd.value).epsilon(1e-5));
    REQUIRE(rf.grad.allFinite());
    CHECK((rf.grad.cast<double>() - rd.grad).cwiseAbs().maxCoeff() <
          1e-3 * rd.grad.cwiseAbs().maxCoeff());
}

TEST_CASE("top-k forward KL: limits and bounds", "[distill][topk][properties]") {
    rt::Generator gen(5);
    const Index N = 6, V = 30;
    const Mat<double> z = gen.logits(N, V), y = gen.logits(N, V);
    const Mat<double> m = Mat<double>::Ones(N, 1);
    const Mat<double> lpf = rlpo::log_softmax_rows(y);
    Mat<double> all(N, V);
    for (Index n = 0; n < N; ++n)
        for (Index j = 0; j < V; ++j)
            all(n, j) = static_cast<double>((j * 7 + n) % V);  // a permutation
    Mat<double> lp_all(N, V);
    for (Index n = 0; n < N; ++n)
        for (Index j = 0; j < V; ++j) lp_all(n, j) = lpf(n, static_cast<Index>(all(n, j)));
    const auto dense = rlpo::distill::forward_kl(z, y, m);
    SECTION("k = V: both tail rules are the dense forward KL") {
        for (TopKTail tail : {TopKTail::Bucket, TopKTail::Renormalize}) {
            TopKOptions o;
            o.tail = tail;
            const auto r = rlpo::distill::forward_kl_topk(z, all, lp_all, m, o);
            CHECK(r.value == Approx(dense.value).epsilon(1e-12));
            CHECK(rlpo_test::max_rel_err(r.grad, dense.grad) < 1e-9);
        }
        DacKLOptions d;
        d.top_p = 1.0;
        const auto r = rlpo::distill::dac_kl(z, y, m, d);
        CHECK(r.value == Approx(dense.value).epsilon(1e-12));
        CHECK(rlpo_test::max_rel_err(r.grad, dense.grad) < 1e-9);
        CHECK(r.metrics["dac_region_size"] == Approx(static_cast<double>(V)));
    }
    SECTION("bucket KL ≤ full KL (data processing), and grows with k") {
        double prev = 0;
        for (Index k : {1, 3, 8, 20}) {
            const auto r =
                rlpo::distill::forward_kl_topk(z, all.leftCols(k), lp_all.leftCols(k), m);
            CHECK(r.value <= dense.value + 1e-12);
            CHECK(r.value >= prev - 1e-12);
            prev = r.value;
        }
    }
    SECTION("micro-batches sum to the whole batch") {
        const Mat<double> mask = gen.mask(3, 2, 1, true);
        rlpo_test::Invariance inv;
        inv.grad_rows_per_seq = 2;
        inv.margin = 1e-15;
        rlpo_test::require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::distill::forward_kl_topk(
                    z.middleRows(r0 * 2, nr * 2), all.leftCols(5).middleRows(r0 * 2, nr * 2),
                    lp_all.leftCols(5).middleRows(r0 * 2, nr * 2), mask.middleRows(r0, nr), {}, n);
            },
            mask, inv);
    }
}

TEST_CASE("top-k forward KL and DAC-KL: bad input gives the documented error",
          "[distill][topk][bad-input]") {
    const Mat<double> z = Mat<double>::Zero(2, 5), m = Mat<double>::Ones(2, 1);
    Mat<double> idx(2, 2), lp(2, 2);
    idx << 0, 1, 2, 3;
    lp << std::log(0.3), std::log(0.2), std::log(0.5), std::log(0.1);
    CHECK(std::isfinite(rlpo::distill::forward_kl_topk(z, idx, lp, m).value));
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::forward_kl_topk(z, idx, Mat<double>(lp.leftCols(1)), m),
        "distill::forward_kl_topk(): teacher_logprobs: expected shape [2, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl_topk(z, Mat<double>(idx.topRows(1)),
                                                                   Mat<double>(lp.topRows(1)), m),
                                    "teacher_indices: expected 2 rows");
    Mat<double> bad = idx;
    bad(1, 1) = 5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::forward_kl_topk(z, bad, lp, m),
        "teacher_indices: 5 at [1, 1] is not a vocabulary index in [0, 5)");
    bad(1, 1) = 2;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl_topk(z, bad, lp, m),
                                    "index 2 repeated in row 1");
    Mat<double> blp = lp;
    blp(0, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl_topk(z, idx, blp, m),
                                    "teacher_logprobs: nan at [0, 1]");
    blp = lp;
    blp(0, 0) = std::log(0.9);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl_topk(z, idx, blp, m),
                                    "the top-k probabilities sum to more than 1 in row 0");
    blp.row(0).setConstant(-inf);
    TopKOptions ren;
    ren.tail = TopKTail::Renormalize;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl_topk(z, idx, blp, m, ren),
                                    "every log-prob is -inf (no distribution) in row 0");
    Mat<double> zi = z;
    zi(0, 0) = -inf;  // student has no mass on a stored teacher entry
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl_topk(zi, idx, lp, m),
                                    "the divergence is infinite");
    DacKLOptions d;
    d.top_p = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::dac_kl(z, z, m, d),
                                    "distill::dac_kl(): top_p: must be in (0, 1]");
    TopKOptions t;
    t.temperature = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl_topk(z, idx, lp, m, t),
                                    "temperature: must be > 0");
    // masked rows are never read: garbage indices there are fine
    Mat<double> mm = m;
    mm(1, 0) = 0;
    bad(1, 1) = -3;
    CHECK(std::isfinite(rlpo::distill::forward_kl_topk(z, bad, lp, mm).value));
}
