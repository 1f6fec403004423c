// USKD (teacher-free self-distillation: the target and Zipf non-target labels, and the weak
// head's term), four ways: finite differences of the loss with its labels held constant,
// PyTorch autograd (float, double, bf16), properties (the Zipf optimum, micro-batches), bad
// input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/core/math.hpp>
#include <rlpo/distill/uskd.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::USKDOptions;
namespace rt = rlpo::testing;
using bf16 = Eigen::bfloat16;
constexpr double inf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

namespace {
struct Case {
    Mat<double> z, u, mask;
    std::vector<Index> targets;
};
Case make_case(std::uint64_t seed, Index B, Index T, Index V) {
    rt::Generator gen(seed);
    Case c;
    c.z = gen.logits(B * T, V, 2.0);
    c.u = gen.logits(B * T, V, 1.5);
    c.mask = gen.mask(B, T, 1, false);
    c.mask(0, 0) = 1;
    for (Index n = 0; n < B * T; ++n) c.targets.push_back((n * 7 + 3) % V);
    for (Index n = 0; n < B * T; ++n)
        if (c.mask(n / T, n % T) == 0) {  // garbage in a masked row is never read
            c.z(n, 0) = kNaN;
            c.u(n, 1) = kNaN;
            c.targets[static_cast<std::size_t>(n)] = -5;
            break;
        }
    return c;
}

// The labels of USKD written from the paper's definitions, independently of the kernel: the
// target label p_y = s_y² + 1 − mean(s_y²) and the normalised Zipf labels of the non-target
// entries (positions in the descending order of the ranking score, ties by index).
struct Labels {
    std::vector<double> py;
    Mat<double> zhat;  // [N, V], 0 at the target
};
Labels labels_of(const Case& c, const Mat<double>& mask, bool weak, double mean_given = -1) {
    const Index N = c.z.rows(), V = c.z.cols(), T = mask.cols();
    Labels l;
    l.py.assign(static_cast<std::size_t>(N), 0.0);
    l.zhat = Mat<double>::Zero(N, V);
    std::vector<double> sq(static_cast<std::size_t>(N), 0.0);
    double num = 0, den = 0;
    for (Index n = 0; n < N; ++n) {
        const double mk = mask(n / T, n % T);
        if (mk == 0) continue;
        const Mat<double> s = rlpo::softmax_rows(Mat<double>(c.z.row(n)));
        const Index y = c.targets[static_cast<std::size_t>(n)];
        sq[static_cast<std::size_t>(n)] = s(0, y) * s(0, y);
        num += mk * s(0, y) * s(0, y);
        den += mk;
    }
    const double mean = mean_given >= 0 ? mean_given : num / den;
    for (Index n = 0; n < N; ++n) {
        if (mask(n / T, n % T) == 0) continue;
        const Index y = c.targets[static_cast<std::size_t>(n)];
        l.py[static_cast<std::size_t>(n)] = sq[static_cast<std::size_t>(n)] + 1 - mean;
        const Mat<double> ls = rlpo::log_softmax_rows(Mat<double>(c.z.row(n)));
        Mat<double> w = Mat<double>::Zero(1, V);
        if (weak) w = rlpo::softmax_rows(Mat<double>(c.u.row(n)));
        std::vector<std::pair<double, Index>> score;
        for (Index j = 0; j < V; ++j)
            score.emplace_back(
                -(ls(0, j) / (1 - ls(0, y) + 1e-6) + (weak ? w(0, j) / (1 - w(0, y) + 1e-6) : 0.0)),
                j);
        std::sort(score.begin(), score.end());  // ascending −score, then index
        double h = 0;
        for (Index k = 0; k < V; ++k)
            if (score[static_cast<std::size_t>(k)].second != y) {
                l.zhat(n, score[static_cast<std::size_t>(k)].second) =
                    1.0 / static_cast<double>(k + 1);
                h += 1.0 / static_cast<double>(k + 1);
            }
        l.zhat.row(n) /= h;
    }
    return l;
}

// The USKD student term with the labels held fixed (a plain function of x): what the
// gradient must be the derivative of.
double frozen_loss(const Mat<double>& x, const Case& c, const Labels& l, const USKDOptions& o,
                   const rlpo::Normalizer& norm) {
    const Index V = x.cols(), T = c.mask.cols();
    const auto w = rlpo::row_weights("test", c.mask, norm);
    double total = 0;
    for (Index n = 0; n < x.rows(); ++n) {
        const double mk = c.mask(n / T, n % T);
        if (mk == 0) continue;
        const Index y = c.targets[static_cast<std::size_t>(n)];
        const Mat<double> ls = rlpo::log_softmax_rows(Mat<double>(x.row(n)));
        // log-softmax over the non-target entries
        double mx = -inf;
        for (Index j = 0; j < V; ++j)
            if (j != y) mx = std::max(mx, x(n, j));
        double se = 0;
        for (Index j = 0; j < V; ++j)
            if (j != y) se += std::exp(x(n, j) - mx);
        const double lzn = mx + std::log(se);
        double non = 0;
        for (Index j = 0; j < V; ++j)
            if (j != y) non -= l.zhat(n, j) * (x(n, j) - lzn);
        const double L = o.alpha * (-l.py[static_cast<std::size_t>(n)] * ls(0, y)) + o.beta * non;
        total += w.c[static_cast<std::size_t>(n / T)] * mk * L;
    }
    return total;
}

}  // namespace

TEST_CASE("USKD: gradients equal central finite differences (labels held constant)",
          "[distill][uskd][fd]") {
    std::uint64_t seed = 900;
    for (Aggregation mode : rlpo_test::all_modes())
        for (bool weak : {false, true}) {
            INFO(rlpo::to_string(mode) << (weak ? " with" : " without") << " the weak head");
            const Case c = make_case(seed++, 3, 2, 9);
            rlpo::Normalizer n;
            n.mode = mode;
            USKDOptions o;
            o.beta = 0.7;
            const auto r = weak ? rlpo::distill::uskd(c.z, c.u, c.mask, c.targets, o, n)
                                : rlpo::distill::uskd(c.z, c.mask, c.targets, o, n);
            const Labels l = labels_of(c, c.mask, weak);
            const auto f = [&](const Mat<double>& x) { return frozen_loss(x, c, l, o, n); };
            CHECK(r.value == Approx(f(c.z)).epsilon(1e-12));
            const auto skip = [&](Index k) {
                const Index row = k / c.z.cols();
                return c.mask(row / 2, row % 2) == 0;
            };
            rlpo_test::require_fd_gradient(f, c.z, r.grad, 1e-6, 1e-9, skip);
            // the weak head's term is a plain function of its logits
            const auto rw = rlpo::distill::uskd_weak(c.u, c.mask, c.targets, o, n);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::distill::uskd_weak(x, c.mask, c.targets, o, n,
                                                    rlpo::no_grad<double>())
                        .value;
                },
                c.u, rw.grad, 1e-6, 1e-9, skip);
        }
}

TEMPLATE_TEST_CASE("USKD: agrees with the PyTorch autograd reference", "[distill][uskd][torch]",
                   float, double, bf16) {
    using S = TestType;
    const std::string tag =
        std::is_same<S, double>::value ? "d" : (std::is_same<S, float>::value ? "f" : "b");
    rlpo_test::TorchReference tr("uskd", "uskd_" + tag);
    struct Run {
        Mat<S> z, u;
        Mat<double> mask;
        std::vector<Index> targets;
        USKDOptions o;
        rlpo::Normalizer n;
        bool weak_term, weak_input;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 1400;
    for (int variant = 0; variant < 8; ++variant) {
        const Index V = variant >= 6 ? 300 : 11;
        const Case c = make_case(seed++, 3, 3, V);
        Run r;
        r.z = c.z.template cast<S>();
        r.u = c.u.template cast<S>();
        r.mask = c.mask;
        r.targets = c.targets;
        r.weak_term = variant % 4 == 3;
        r.weak_input = variant % 2 == 1;
        r.o.alpha = variant == 2 ? 0.5 : 1.0;
        r.o.beta = variant == 4 ? 1.3 : 0.1;
        r.o.mu = variant == 7 ? 0.2 : 0.005;
        r.o.weak_smoothing = variant == 7 ? 0.0 : 0.1;
        if (variant == 5) r.o.target_sq_mean = 0.3;
        r.n.mode = variant == 2 ? Aggregation::SeqMeanTokenMean
                                : (variant == 6 ? Aggregation::TokenSum : Aggregation::TokenMean);
        Mat<double> tg(c.z.rows(), 1);
        for (Index k = 0; k < c.z.rows(); ++k) tg(k, 0) = static_cast<double>(c.targets[k]);
        auto& tc = tr.add<S>(r.weak_term ? "uskd_weak" : "uskd");
        tc.in("student", r.z).in("mask", r.mask).in("targets", tg);
        if (r.weak_term || r.weak_input) tc.in("weak", r.u);
        tc.p("alpha", r.o.alpha).p("beta", r.o.beta).p("mu", r.o.mu);
        tc.p("weak_smoothing", r.o.weak_smoothing).s("agg", rlpo::to_string(r.n.mode));
        if (r.o.target_sq_mean) tc.p("target_sq_mean", *r.o.target_sq_mean);
        runs.push_back(std::move(r));
    }
    tr.run();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const auto& r = runs[i];
        INFO("case " << i << (r.weak_term ? " uskd_weak" : " uskd"));
        const auto res =
            r.weak_term ? rlpo::distill::uskd_weak(r.u, r.mask, r.targets, r.o, r.n)
                        : (r.weak_input ? rlpo::distill::uskd(r.z, r.u, r.mask, r.targets, r.o, r.n)
                                        : rlpo::distill::uskd(r.z, r.mask, r.targets, r.o, r.n));
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value"), 1e-6) <
              rlpo_test::grad_tol<S>());
        CHECK(rlpo_test::grad_err<S>(res.grad.template cast<double>(), tr.out(i, "grad")) <
              rlpo_test::grad_tol<S>());
        const char* metric = r.weak_term ? "uskd_weak_loss" : "uskd_loss";
        CHECK(rlpo_test::rel_err(res.metrics[metric], tr.scalar(i, "metric"), 1e-6) <
              rlpo_test::grad_tol<S>());
        if (!r.weak_term) {
            CHECK(rlpo_test::rel_err(res.metrics["uskd_target_loss"], tr.scalar(i, "target"),
                                     1e-6) < rlpo_test::grad_tol<S>());
            CHECK(rlpo_test::rel_err(res.metrics["uskd_target_sq"], tr.scalar(i, "sq"), 1e-6) <
                  rlpo_test::grad_tol<S>());
        }
    }
}

TEST_CASE("USKD: limits and identities", "[distill][uskd][properties]") {
    SECTION("β-term optimum: a student whose non-target softmax is the Zipf law") {
        // Non-target logits log(1/k) in rank order and a dominant target: the non-target
        // softmax equals the Zipf labels, so that term's gradient is 0 and its value is the
        // entropy of the labels; α = 0 isolates it.
        const Index V = 12;
        Mat<double> z(1, V);
        const Index y = 4;
        double h = 0, ent = 0;
        Index k = 1;
        for (Index j = 0; j < V; ++j)
            if (j != y) {
                z(0, j) = std::log(1.0 / static_cast<double>(k + 1));  // position k (target 0)
                h += 1.0 / static_cast<double>(k + 1);
                ++k;
            }
        z(0, y) = 3.0;
        for (Index kk = 1; kk < V; ++kk) {
            const double p = (1.0 / static_cast<double>(kk + 1)) / h;
            ent -= p * std::log(p);
        }
        USKDOptions o;
        o.alpha = 0;
        o.beta = 1;
        const Mat<double> m = Mat<double>::Ones(1, 1);
        const auto r = rlpo::distill::uskd(z, m, {y}, o);
        CHECK(r.value == Approx(ent).epsilon(1e-12));
        CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-14);
    }
    SECTION("β = 0: the target term −p_y log s_y with p_y = 1 for a single row") {
        rt::Generator gen(11);
        const Mat<double> z = gen.logits(1, 7);
        USKDOptions o;
        o.beta = 0;
        const auto r = rlpo::distill::uskd(z, Mat<double>(Mat<double>::Ones(1, 1)), {2}, o);
        const Mat<double> ls = rlpo::log_softmax_rows(z);
        CHECK(r.value == Approx(-ls(0, 2)).epsilon(1e-13));  // s² + 1 − mean(s²) = 1
    }
    SECTION("micro-batches with the global target_sq_mean sum to the whole batch") {
        const Case c = make_case(31, 4, 2, 10);
        Mat<double> mask = c.mask;
        mask(2, 1) = 0.5;  // a fractional weight
        Case cc = c;
        for (Index n = 0; n < 8; ++n)
            if (mask(n / 2, n % 2) != 0 && std::isnan(cc.z(n, 0))) {
                cc.z(n, 0) = 0.1;
                cc.u(n, 1) = -0.2;
                cc.targets[static_cast<std::size_t>(n)] = 3;
            }
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = rlpo_test::global_normalizer(mode, mask);
            const auto whole = rlpo::distill::uskd(cc.z, cc.u, mask, cc.targets, {}, n);
            USKDOptions o;
            o.target_sq_mean = whole.metrics["uskd_target_sq"];
            const std::vector<Index> ta(cc.targets.begin(), cc.targets.begin() + 4),
                tb(cc.targets.begin() + 4, cc.targets.end());
            const auto a =
                rlpo::distill::uskd(Mat<double>(cc.z.topRows(4)), Mat<double>(cc.u.topRows(4)),
                                    Mat<double>(mask.topRows(2)), ta, o, n);
            const auto b = rlpo::distill::uskd(Mat<double>(cc.z.bottomRows(4)),
                                               Mat<double>(cc.u.bottomRows(4)),
                                               Mat<double>(mask.bottomRows(2)), tb, o, n);
            CHECK(a.value + b.value == Approx(whole.value).epsilon(1e-12).margin(1e-15));
            Mat<double> g(8, 10);
            g << a.grad, b.grad;
            CHECK(rlpo_test::max_rel_err(g, whole.grad) < 1e-12);
            rlpo::Metrics merged = a.metrics;
            merged.merge(b.metrics);
            CHECK(merged["uskd_target_sq"] ==
                  Approx(whole.metrics["uskd_target_sq"]).epsilon(1e-14));
            CHECK(merged["uskd_loss"] == Approx(whole.metrics["uskd_loss"]).epsilon(1e-12));
        }
    }
    SECTION("the gradient destinations agree (own, write, add, none)") {
        const Case c = make_case(5, 2, 2, 6);
        const auto own = rlpo::distill::uskd(c.z, c.mask, c.targets);
        Mat<double> buf = Mat<double>::Constant(4, 6, 2.0);
        const auto added =
            rlpo::distill::uskd(c.z, c.mask, c.targets, {}, {}, rlpo::add_to(buf, 0.5));
        CHECK(added.value == Approx(0.5 * own.value).epsilon(1e-14));
        for (Index n = 0; n < 4; ++n)
            for (Index j = 0; j < 6; ++j)
                CHECK(buf(n, j) == Approx(2.0 + 0.5 * own.grad(n, j)).epsilon(1e-14));
        const auto none =
            rlpo::distill::uskd(c.z, c.mask, c.targets, {}, {}, rlpo::no_grad<double>());
        CHECK(none.value == own.value);
    }
}

TEST_CASE("USKD: bad input gives the documented error", "[distill][uskd][bad-input]") {
    const Mat<double> z = Mat<double>::Zero(2, 4), m = Mat<double>::Ones(2, 1);
    const std::vector<Index> t = {1, 2};
    USKDOptions o;
    o.alpha = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(z, m, t, o),
                                    "distill::uskd(): alpha: must be >= 0");
    o = {};
    o.beta = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(z, m, t, o), "beta: must be >= 0");
    o = {};
    o.mu = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd_weak(z, m, t, o),
                                    "distill::uskd_weak(): mu: must be >= 0");
    o = {};
    o.weak_smoothing = 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd_weak(z, m, t, o),
                                    "weak_smoothing: must be in [0, 1]");
    o = {};
    o.target_sq_mean = 2.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(z, m, t, o),
                                    "target_sq_mean: must be in [0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(z, m, {1}), "targets: expected 2 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(z, m, {1, 4}),
                                    "targets: 4 at row 1 is not a vocabulary index");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::uskd(Mat<double>(Mat<double>::Zero(2, 1)), m, std::vector<Index>{0, 0}),
        "need at least 2 vocabulary entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::uskd(z, Mat<double>(Mat<double>::Zero(2, 3)), m, t),
        "weak_logits: expected shape [2, 4]");
    Mat<double> bad = z;
    bad(1, 2) = kNaN;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(bad, m, t), "student_logits: NaN");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(z, bad, m, t), "weak_logits: NaN");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd_weak(bad, m, t), "weak_logits: NaN");
    bad(1, 2) = inf;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(bad, m, t), "student_logits: +inf logit");
    bad(1, 2) = -inf;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd(bad, m, t),
                                    "student_logits: -inf logit (USKD's labels");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd_weak(bad, m, t),
                                    "weak_logits: -inf logit (the smoothed target");
    o = {};
    o.weak_smoothing = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::uskd_weak(bad, m, t, o),
                                    "weak_logits: -inf logit at the target");  // t[1] = 2
    // without smoothing a −inf weak logit off the target is a zero probability: finite
    bad(1, 2) = 0;
    bad(1, 3) = -inf;
    const auto r = rlpo::distill::uskd_weak(bad, m, t, o);
    CHECK(std::isfinite(r.value));
    CHECK(r.grad.allFinite());
    // an empty mask: value 0, gradient 0, metrics 0
    const auto e = rlpo::distill::uskd(z, Mat<double>(Mat<double>::Zero(2, 1)), t);
    CHECK(e.value == 0.0);
    CHECK(e.grad.isZero());
    CHECK(e.metrics["uskd_target_sq"] == 0.0);
}
