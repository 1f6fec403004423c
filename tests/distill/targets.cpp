// TAID (interpolated target + adaptive schedule) and NKD (target / normalised non-target),
// four ways: finite differences, PyTorch autograd (float, double, bf16), properties, bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/core/math.hpp>
#include <rlpo/distill/divergences.hpp>
#include <rlpo/distill/nkd.hpp>
#include <rlpo/distill/taid.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <vector>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::NKDOptions;
using rlpo::distill::TAIDOptions;
using rlpo::distill::TAIDSchedule;
namespace rt = rlpo::testing;
using bf16 = Eigen::bfloat16;
constexpr double inf = std::numeric_limits<double>::infinity();

namespace {
struct Case {
    Mat<double> z, y, mask;
};
Case make_case(std::uint64_t seed, Index B, Index T, Index V) {
    rt::Generator gen(seed);
    Case c;
    c.z = gen.logits(B * T, V, 2.0);
    c.y = gen.perturbed(c.z, 1.5);
    c.z(0, 1) = c.y(0, 1) = -inf;  // a dead vocabulary entry
    c.mask = gen.mask(B, T, 1, false);
    c.mask(0, 0) = 1;
    for (Index n = 0; n < B * T; ++n)
        if (c.mask(n / T, n % T) == 0) {
            c.z(n, 0) = std::numeric_limits<double>::quiet_NaN();
            break;
        }
    return c;
}
}  // namespace

TEST_CASE("TAID and NKD: gradients equal central finite differences", "[distill][taid][nkd][fd]") {
    std::uint64_t seed = 70;
    for (Aggregation mode : rlpo_test::all_modes())
        for (double tau : {1.0, 2.0}) {
            INFO(rlpo::to_string(mode) << " tau " << tau);
            const Case c = make_case(seed++, 3, 2, 8);
            rlpo::Normalizer n;
            n.mode = mode;
            const auto skip = [&](Index k) {
                const Index row = k / c.z.cols();
                return c.mask(row / 2, row % 2) == 0;
            };
            for (double t : {0.0, 0.4, 1.0}) {
                TAIDOptions o;
                o.t = t;
                o.temperature = tau;
                o.temperature_squared = tau > 1;
                const auto r = rlpo::distill::taid(c.z, c.y, c.mask, o, n);
                // the target is a constant (stop-gradient): FD must hold it fixed, so
                // differentiate the cross-entropy to the target computed at the base point
                const auto ce = [&](const Mat<double>& x) {
                    double total = 0;
                    const auto w = rlpo::row_weights("t", c.mask, n);
                    for (Index row = 0; row < x.rows(); ++row) {
                        const double mk = c.mask(row / 2, row % 2);
                        if (mk == 0) continue;
                        Mat<double> u = (1 - t) * c.z.row(row) + t * c.y.row(row);
                        for (Index j = 0; j < u.cols(); ++j)
                            if (std::isnan(u(0, j))) u(0, j) = -inf;
                        const Mat<double> target = rlpo::softmax_rows(Mat<double>(u / tau));
                        const Mat<double> lq =
                            rlpo::log_softmax_rows(Mat<double>(x.row(row) / tau));
                        double l = 0;
                        for (Index j = 0; j < u.cols(); ++j)
                            if (target(0, j) > 0) l -= target(0, j) * lq(0, j);
                        total += w.c[static_cast<std::size_t>(row / 2)] * mk * l *
                                 (tau > 1 ? tau * tau : 1.0);
                    }
                    return total;
                };
                CHECK(r.value == Approx(ce(c.z)).epsilon(1e-12));
                rlpo_test::require_fd_gradient(ce, c.z, r.grad, 1e-6, 1e-8, skip);
            }
            NKDOptions no;
            no.temperature = tau;
            const auto r = rlpo::distill::nkd(c.z, c.y, c.mask, {}, no, n);
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::distill::nkd(x, c.y, c.mask, {}, no, n, rlpo::no_grad<double>())
                        .value;
                },
                c.z, r.grad, 1e-6, 1e-8, skip);
        }
}

TEMPLATE_TEST_CASE("TAID and NKD: agree with the PyTorch autograd reference",
                   "[distill][taid][nkd][torch]", float, double, bf16) {
    using S = TestType;
    const std::string tag =
        std::is_same<S, double>::value ? "d" : (std::is_same<S, float>::value ? "f" : "b");
    rlpo_test::TorchReference tr("distill", "targets_" + tag);
    struct Run {
        Mat<S> z, y;
        Mat<double> mask;
        bool is_taid;
        TAIDOptions o;
        NKDOptions no;
        std::vector<Index> targets;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 1300;
    for (int kind = 0; kind < 2; ++kind)
        for (int variant = 0; variant < 4; ++variant) {
            const Index V = variant == 3 ? 400 : 10;
            const Case c = make_case(seed++, 3, 3, V);
            Run r;
            r.z = c.z.template cast<S>();
            r.y = c.y.template cast<S>();
            r.mask = c.mask;
            r.is_taid = kind == 0;
            r.o.t = variant == 0 ? 0.4 : (variant == 1 ? 0.85 : 1.0);
            r.o.temperature = r.no.temperature = variant == 1 ? 1.5 : 1.0;
            r.o.temperature_squared = variant == 1;
            r.no.gamma = variant == 2 ? 0.5 : 1.5;
            r.n.mode = variant == 2 ? Aggregation::SeqMeanTokenMean : Aggregation::TokenMean;
            auto& tc = tr.add<S>(r.is_taid ? "taid" : "nkd");
            tc.in("student", r.z).in("teacher", r.y).in("mask", r.mask);
            tc.p("temperature", r.o.temperature).s("agg", rlpo::to_string(r.n.mode));
            if (r.is_taid) {
                tc.p("t", r.o.t).p("tsq", r.o.temperature_squared ? 1.0 : 0.0);
            } else {
                tc.p("gamma", r.no.gamma);
                if (variant % 2) {  // given targets (else the teacher argmax)
                    Mat<double> tg(c.z.rows(), 1);
                    for (Index k = 0; k < c.z.rows(); ++k) {
                        r.targets.push_back((k * 3 + 2) % V);
                        tg(k, 0) = static_cast<double>(r.targets.back());
                    }
                    tc.in("targets", tg);
                }
            }
            runs.push_back(std::move(r));
        }
    tr.run();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        const auto& r = runs[i];
        INFO("case " << i << (r.is_taid ? " taid" : " nkd"));
        const auto res = r.is_taid ? rlpo::distill::taid(r.z, r.y, r.mask, r.o, r.n)
                                   : rlpo::distill::nkd(r.z, r.y, r.mask, r.targets, r.no, r.n);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value"), 1e-6) <
              rlpo_test::value_tol<S>());
        CHECK(rlpo_test::grad_err<S>(res.grad.template cast<double>(), tr.out(i, "grad")) <
              rlpo_test::grad_tol<S>());
        const char* metric = r.is_taid ? "taid_loss" : "nkd_loss";
        CHECK(rlpo_test::rel_err(res.metrics[metric], tr.scalar(i, "metric"), 1e-6) <
              rlpo_test::value_tol<S>());
        if (!r.is_taid)
            CHECK(rlpo_test::rel_err(res.metrics["nkd_target_loss"], tr.scalar(i, "target"), 1e-6) <
                  rlpo_test::value_tol<S>());
    }
}

TEST_CASE("TAID and NKD: limits and identities", "[distill][taid][nkd][properties]") {
    rt::Generator gen(4);
    const Mat<double> z = gen.logits(4, 20), y = gen.logits(4, 20);
    const Mat<double> m = Mat<double>::Ones(4, 1);
    SECTION("TAID t = 1 is the forward-KL gradient; t = 0 has zero gradient") {
        TAIDOptions o;
        o.t = 1.0;
        const auto r = rlpo::distill::taid(z, y, m, o);
        const auto f = rlpo::distill::forward_kl(z, y, m);
        CHECK(rlpo_test::max_rel_err(r.grad, f.grad) < 1e-12);
        o.t = 0.0;
        CHECK(rlpo::distill::taid(z, y, m, o).grad.cwiseAbs().maxCoeff() < 1e-14);
    }
    SECTION("NKD with γ = 0 is the teacher-weighted target cross-entropy") {
        NKDOptions o;
        o.gamma = 0.0;
        rlpo::Normalizer sum;
        sum.mode = Aggregation::TokenSum;
        const auto r = rlpo::distill::nkd(z, y, m, {}, o, sum);
        const Mat<double> lq = rlpo::log_softmax_rows(z), p = rlpo::softmax_rows(y);
        double expect = 0;
        for (Index n = 0; n < 4; ++n) {
            Index yt = 0;
            y.row(n).maxCoeff(&yt);
            expect -= p(n, yt) * lq(n, yt);
        }
        CHECK(r.value == Approx(expect).epsilon(1e-12));
    }
    SECTION("micro-batches sum to the whole batch") {
        const Mat<double> mask = gen.mask(2, 2, 1, false);
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = rlpo_test::global_normalizer(mode, mask);
            const auto whole = rlpo::distill::nkd(z, y, mask, {}, {}, n);
            const auto a =
                rlpo::distill::nkd(z.topRows(2), y.topRows(2), mask.topRows(1), {}, {}, n);
            const auto b =
                rlpo::distill::nkd(z.bottomRows(2), y.bottomRows(2), mask.bottomRows(1), {}, {}, n);
            CHECK(a.value + b.value == Approx(whole.value).epsilon(1e-12).margin(1e-15));
            TAIDOptions o;
            const auto tw = rlpo::distill::taid(z, y, mask, o, n);
            const auto ta = rlpo::distill::taid(z.topRows(2), y.topRows(2), mask.topRows(1), o, n);
            const auto tb =
                rlpo::distill::taid(z.bottomRows(2), y.bottomRows(2), mask.bottomRows(1), o, n);
            CHECK(ta.value + tb.value == Approx(tw.value).epsilon(1e-12).margin(1e-15));
        }
    }
    SECTION("TAIDSchedule: linear floor, adaptive increase, capped at t_end") {
        TAIDSchedule::Options so;
        so.total_steps = 100;
        TAIDSchedule s(so);
        CHECK(s.t() == 0.4);
        // a constant loss: δ = 0, m = 0, increment α·½·(1 − t) — vs the linear floor
        double t_prev = s.t();
        for (int k = 1; k <= 100; ++k) {
            const double t = s.update(1.0);
            const double lin = 0.4 + 0.6 * k / 100.0;
            CHECK(t >= lin - 1e-15);
            CHECK(t >= t_prev);
            CHECK(t <= 1.0);
            t_prev = t;
        }
        CHECK(s.t() == 1.0);
        // closed form of the first adaptive step with a falling loss
        TAIDSchedule s2(so);
        s2.update(2.0);  // records J, t = max(linear, t)
        const double t1 = s2.t();
        s2.update(1.0);  // δ = (2 − 1)/(2 + ε), m = 0.01 δ
        const double m = 0.01 * (1.0 / (2.0 + 1e-8));
        const double expect =
            std::max(0.4 + 0.6 * 2 / 100.0, t1 + 5e-4 / (1 + std::exp(-m)) * (1 - t1));
        CHECK(s2.t() == Approx(expect).epsilon(1e-14));
        CHECK(s2.momentum() == Approx(m).epsilon(1e-12));
    }
}

TEST_CASE("TAID and NKD: bad input gives the documented error", "[distill][taid][nkd][bad-input]") {
    const Mat<double> z = Mat<double>::Zero(2, 4), m = Mat<double>::Ones(2, 1);
    TAIDOptions o;
    o.t = 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::taid(z, z, m, o),
                                    "distill::taid(): t: must be in [0, 1]");
    o = {};
    o.temperature = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::taid(z, z, m, o), "temperature: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::taid(z, Mat<double>(Mat<double>::Zero(2, 3)), m),
                                    "teacher_logits: expected shape [2, 4]");
    Mat<double> bad = z;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::taid(bad, z, m), "student_logits: NaN");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::nkd(z, bad, m), "teacher_logits: NaN");
    NKDOptions no;
    no.gamma = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::nkd(z, z, m, {}, no), "gamma: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::nkd(z, z, m, {1}),
                                    "targets: expected 2 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::nkd(z, z, m, {1, 4}),
                                    "targets: 4 at row 1 is not a vocabulary index");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::nkd(Mat<double>(Mat<double>::Zero(2, 1)),
                                                       Mat<double>(Mat<double>::Zero(2, 1)), m),
                                    "need at least 2 vocabulary entries");
    TAIDSchedule::Options so;
    so.t_start = 1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TAIDSchedule{so},
                                    "distill::TAIDSchedule(): t_start: must be in [0, 1)");
    so = {};
    so.beta = 1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TAIDSchedule{so}, "beta: must be in [0, 1)");
    so = {};
    so.total_steps = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TAIDSchedule{so}, "total_steps: must be > 0");
    TAIDSchedule s({});
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(s.update(std::nan("")), "loss: must be finite");
}
