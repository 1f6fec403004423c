// Full-vocabulary KL / forward KL / χ² / TV / JS over logits, four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/core/math.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/penalties/vocab_divergence.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::penalties::VocabDivergence;
using rlpo::penalties::VocabDivergenceOptions;
namespace rt = rlpo::testing;
constexpr double ninf = -std::numeric_limits<double>::infinity();

static const VocabDivergence kDivs[] = {
    VocabDivergence::ReverseKL, VocabDivergence::ForwardKL, VocabDivergence::ChiSquared,
    VocabDivergence::TotalVariation, VocabDivergence::JensenShannon};

namespace {
VocabDivergenceOptions make(VocabDivergence d, double tau = 1.0) {
    VocabDivergenceOptions o;
    o.divergence = d;
    o.temperature = tau;
    return o;
}
}  // namespace

TEST_CASE("vocab_divergence: gradient equals central finite differences",
          "[penalties][vocab][fd]") {
    rt::Generator gen(41);
    const Index B = 3, T = 4, V = 7;
    Mat<double> z = gen.logits(B * T, V, 1.5), zr = gen.logits(B * T, V, 1.5);
    z(0, 6) = ninf;  // a zero-probability entry in both (finite divergences)
    zr(0, 6) = ninf;
    zr(1, 2) = ninf;  // reference zero where the policy has mass: fine for forward KL, TV, JS
    const Mat<double> m = gen.mask(B, T, 1, true);
    for (VocabDivergence d : kDivs)
        for (double tau : {1.0, 0.7})
            for (Aggregation mode : rlpo_test::all_modes()) {
                INFO(rlpo::penalties::to_string(d)
                     << " tau " << tau << " " << rlpo::to_string(mode));
                Mat<double> ref = zr;
                if (d == VocabDivergence::ReverseKL || d == VocabDivergence::ChiSquared)
                    ref(1, 2) = 0.3;
                rlpo::Normalizer n;
                n.mode = mode;
                const auto r = rlpo::penalties::vocab_divergence(z, ref, m, make(d, tau), n);
                // TV has kinks where p_j = q_j: skip entries whose row is within reach of one
                const auto near_kink = [&](Index k) {
                    if (d != VocabDivergence::TotalVariation) return false;
                    const Index row = k / V;
                    const Mat<double> p = rlpo::softmax_rows(Mat<double>(z.row(row) / tau));
                    const Mat<double> q = rlpo::softmax_rows(Mat<double>(ref.row(row) / tau));
                    return ((p - q).array().abs() < 1e-5).any();
                };
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        return rlpo::penalties::vocab_divergence(x, ref, m, make(d, tau), n,
                                                                 rlpo::no_grad<double>())
                            .value;
                    },
                    z, r.grad, 1e-6, 1e-9, near_kink);
            }
}

TEMPLATE_TEST_CASE("vocab_divergence: agrees with the PyTorch autograd reference",
                   "[penalties][vocab][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("penalties", std::string("vocab_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> z, zr, mask;
        VocabDivergenceOptions o;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 500;
    for (VocabDivergence d : kDivs)
        for (Aggregation mode : rlpo_test::all_modes()) {
            rt::Generator gen(seed++);
            Run r;
            const Index B = 3, T = 5, V = 33;
            r.z = gen.logits<S>(B * T, V, 2.0);
            r.zr = gen.logits<S>(B * T, V, 2.0);
            r.z(0, 1) = -std::numeric_limits<S>::infinity();  // zero probability in both
            r.zr(0, 1) = -std::numeric_limits<S>::infinity();
            if (d != VocabDivergence::ReverseKL && d != VocabDivergence::ChiSquared)
                r.zr(2, 4) = -std::numeric_limits<S>::infinity();  // reference zero, policy not
            if (d == VocabDivergence::ReverseKL || d == VocabDivergence::TotalVariation)
                r.z(3, 7) = -std::numeric_limits<S>::infinity();  // policy zero, reference not
            r.mask = gen.mask<S>(B, T, 1, true);
            r.mask(0, 0) = 1;
            r.mask(1, 1) = 0;
            r.z(1 * T + 1, 0) = std::numeric_limits<S>::quiet_NaN();  // masked garbage row
            r.o = make(d, seed % 2 ? 1.0 : 0.8);
            r.n.mode = mode;
            if (seed % 3 == 0) r.n.num_tokens = 40.0, r.n.num_seqs = 6.0;
            auto& c = tr.add<S>("vocab_divergence");
            c.in("logits", r.z).in("ref_logits", r.zr).in("mask", r.mask);
            c.p("temperature", r.o.temperature);
            c.s("divergence", rlpo::penalties::to_string(d)).s("agg", rlpo::to_string(mode));
            if (r.n.num_tokens) c.p("num_tokens", *r.n.num_tokens);
            if (r.n.num_seqs) c.p("num_seqs", *r.n.num_seqs);
            runs.push_back(std::move(r));
        }
    tr.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i << " " << rlpo::penalties::to_string(runs[i].o.divergence));
        const auto& r = runs[i];
        const auto res = rlpo::penalties::vocab_divergence(r.z, r.zr, r.mask, r.o, r.n);
        CHECK(rlpo_test::rel_err(res.value, tr.scalar(i, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, tr.out(i, "grad")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics[rlpo::penalties::to_string(r.o.divergence)],
                                 tr.scalar(i, "metric")) < tol);
    }
}

TEST_CASE("vocab_divergence: properties", "[penalties][vocab][properties]") {
    rt::Generator gen(43);
    const Index N = 6, V = 9;
    const Mat<double> z = gen.logits(N, V, 2.0), zr = gen.logits(N, V, 2.0);
    const Mat<double> ones = Mat<double>::Ones(N, 1);
    rlpo::Normalizer sum;
    sum.mode = Aggregation::TokenSum;
    SECTION("D(p, p) = 0 with zero gradient, for every divergence") {
        for (VocabDivergence d : kDivs) {
            const auto r = rlpo::penalties::vocab_divergence(z, z, ones, make(d), sum);
            CHECK(std::abs(r.value) < 1e-14);
            CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-14);
        }
    }
    SECTION("closed forms on two outcomes, identities and inequalities") {
        Mat<double> a(1, 2), b(1, 2);
        a << std::log(0.7), std::log(0.3);
        b << std::log(0.4), std::log(0.6);
        const Mat<double> one = Mat<double>::Ones(1, 1);
        auto val = [&](VocabDivergence d, const Mat<double>& x, const Mat<double>& y) {
            return rlpo::penalties::vocab_divergence(x, y, one, make(d), sum).value;
        };
        const double kl = 0.7 * std::log(0.7 / 0.4) + 0.3 * std::log(0.3 / 0.6);
        const double fkl = 0.4 * std::log(0.4 / 0.7) + 0.6 * std::log(0.6 / 0.3);
        CHECK(val(VocabDivergence::ReverseKL, a, b) == Approx(kl).epsilon(1e-14));
        CHECK(val(VocabDivergence::ForwardKL, a, b) == Approx(fkl).epsilon(1e-14));
        CHECK(val(VocabDivergence::ForwardKL, b, a) == Approx(kl).epsilon(1e-14));  // swap
        CHECK(val(VocabDivergence::ChiSquared, a, b) ==
              Approx(0.09 / 0.4 + 0.09 / 0.6).epsilon(1e-14));
        CHECK(val(VocabDivergence::TotalVariation, a, b) == Approx(0.3).epsilon(1e-14));
        const double m0 = 0.55, m1 = 0.45;
        const double js = 0.5 * (0.7 * std::log(0.7 / m0) + 0.3 * std::log(0.3 / m1)) +
                          0.5 * (0.4 * std::log(0.4 / m0) + 0.6 * std::log(0.6 / m1));
        CHECK(val(VocabDivergence::JensenShannon, a, b) == Approx(js).epsilon(1e-14));
        // logits are defined up to a constant per row; temperature divides them
        const Mat<double> a_shift = a.array() + 5.0;
        CHECK(val(VocabDivergence::ReverseKL, a_shift, b) == Approx(kl).epsilon(1e-13));
        VocabDivergenceOptions hot = make(VocabDivergence::ReverseKL, 2.0);
        CHECK(rlpo::penalties::vocab_divergence(Mat<double>(2.0 * a), Mat<double>(2.0 * b), one,
                                                hot, sum)
                  .value == Approx(kl).epsilon(1e-13));
    }
    SECTION("on random rows: Pinsker, KL ≤ log(1 + χ²), JS ≤ log 2, TV ≤ 1; disjoint supports") {
        for (Index n = 0; n < N; ++n) {
            const Mat<double> x = z.row(n), y = zr.row(n), one = Mat<double>::Ones(1, 1);
            auto val = [&](VocabDivergence d) {
                return rlpo::penalties::vocab_divergence(x, y, one, make(d), sum).value;
            };
            const double kl = val(VocabDivergence::ReverseKL),
                         tv = val(VocabDivergence::TotalVariation);
            CHECK(tv <= std::sqrt(kl / 2) + 1e-12);
            CHECK(kl <= std::log1p(val(VocabDivergence::ChiSquared)) + 1e-12);
            CHECK(val(VocabDivergence::JensenShannon) <= std::log(2.0) + 1e-12);
            CHECK(tv <= 1.0);
        }
        Mat<double> p(1, 2), q(1, 2);
        p << 0.0, ninf;
        q << ninf, 0.0;
        const Mat<double> one = Mat<double>::Ones(1, 1);
        CHECK(
            rlpo::penalties::vocab_divergence(p, q, one, make(VocabDivergence::JensenShannon), sum)
                .value == Approx(std::log(2.0)).epsilon(1e-14));
        CHECK(
            rlpo::penalties::vocab_divergence(p, q, one, make(VocabDivergence::TotalVariation), sum)
                .value == Approx(1.0).epsilon(1e-14));
    }
    SECTION("the full-vocabulary KL is the exact expectation of the k1 and k3 token estimators") {
        const Mat<double> lp = rlpo::log_softmax_rows(z), lq = rlpo::log_softmax_rows(zr);
        for (Index n = 0; n < N; ++n) {
            const Mat<double> pi = lp.row(n).array().exp();
            const double exact = rlpo::penalties::vocab_divergence(
                                     Mat<double>(z.row(n)), Mat<double>(zr.row(n)),
                                     Mat<double>::Ones(1, 1), make(VocabDivergence::ReverseKL), sum)
                                     .value;
            for (auto e : {rlpo::penalties::KLEstimator::K1, rlpo::penalties::KLEstimator::K3}) {
                const auto est =
                    rlpo::penalties::kl_penalty(Mat<double>(lp.row(n)), Mat<double>(lq.row(n)), pi,
                                                rlpo::penalties::KLOptions::trl(e), sum);
                CHECK(est.value == Approx(exact).epsilon(1e-12));
            }
        }
    }
    SECTION("micro-batches with global counts sum to the whole batch; masked rows never read") {
        const Index B = 4, T = 3;
        Mat<double> zz = gen.logits(B * T, V, 1.0), zzr = gen.logits(B * T, V, 1.0);
        Mat<double> m = gen.mask(B, T, 1, true);
        m(2, 1) = 0;
        zz(2 * T + 1, 3) = std::numeric_limits<double>::quiet_NaN();
        for (VocabDivergence d : kDivs) {
            INFO(rlpo::penalties::to_string(d));
            CHECK(rlpo::penalties::vocab_divergence(zz, zzr, m, make(d))
                      .grad.row(2 * T + 1)
                      .isZero());
            rlpo_test::Invariance inv;
            inv.grad_rows_per_seq = T;
            rlpo_test::require_micro_batch_invariance(
                [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                    return rlpo::penalties::vocab_divergence(
                        Mat<double>(zz.middleRows(r0 * T, nr * T)),
                        Mat<double>(zzr.middleRows(r0 * T, nr * T)),
                        Mat<double>(m.middleRows(r0, nr)), make(d), n);
                },
                m, inv);
        }
    }
}

TEST_CASE("vocab_divergence: bad input gives the documented error",
          "[penalties][vocab][bad-input]") {
    const Mat<double> z = Mat<double>::Zero(4, 3), m = Mat<double>::Ones(2, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::vocab_divergence(z, Mat<double>::Zero(4, 2), m),
        "penalties::vocab_divergence(): ref_logits: expected shape [4, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::vocab_divergence(z, z, Mat<double>::Ones(3, 1)),
        "mask: expected 4 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::vocab_divergence(z, z, m, make(VocabDivergence::ReverseKL, 0.0)),
        "temperature: must be > 0");
    Mat<double> bad = z;
    bad(3, 1) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(bad, z, m),
                                    "logits: NaN at [3, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(z, bad, m),
                                    "ref_logits: NaN at [3, 1]");
    Mat<double> mm = m;
    mm(1, 1) = 0;  // row 3 masked: its NaN is never read
    CHECK(std::isfinite(rlpo::penalties::vocab_divergence(bad, z, mm).value));
    Mat<double> dead = z;
    dead.row(2).setConstant(ninf);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(dead, z, m),
                                    "row 2 has no finite entry");
    Mat<double> hole = z;
    hole(0, 0) = ninf;  // reference has no mass at 0, policy has
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::penalties::vocab_divergence(z, hole, m),
                                    "kl: row 0 is infinite");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::penalties::vocab_divergence(hole, z, m, make(VocabDivergence::ForwardKL)),
        "forward_kl: row 0 is infinite");
    CHECK(std::isfinite(
        rlpo::penalties::vocab_divergence(z, hole, m, make(VocabDivergence::ForwardKL)).value));
    const auto empty =
        rlpo::penalties::vocab_divergence(z, Mat<double>::Ones(4, 3), Mat<double>::Zero(2, 2));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
    CHECK(empty.metrics["kl"] == 0.0);
}
