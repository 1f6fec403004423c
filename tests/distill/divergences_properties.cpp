// Dense distillation divergences: identities and limits, micro-batch additivity in every
// aggregation mode, and the documented errors on bad input.
#include "distill/divergences_common.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <vector>

TEST_CASE("distill divergences: identities and limits", "[distill][properties]") {
    rt::Generator gen(3);
    const Mat<double> z = gen.logits(6, 40), y = gen.logits(6, 40);
    const Mat<double> m = Mat<double>::Ones(2, 3);
    SECTION("D(p, p) = 0 with zero gradient, every divergence and temperature") {
        for (Divergence d : kAll)
            for (double tau : {0.5, 1.0, 3.0}) {
                const auto r = rlpo::distill::divergence(z, z, m, opts_for(d, tau, true));
                CHECK(std::abs(r.value) < 1e-13);
                CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-13);
            }
    }
    SECTION("float through the row pipeline: D(p, p) = 0; TVD exactly (sign(0) = 0)") {
        // equal rows give bitwise equal q and p, so TVD's sign must be exactly 0 everywhere
        const Mat<float> zf = gen.logits(4, 3 * 2048 + 5, 3.0).cast<float>();
        const Mat<float> m4 = Mat<float>::Ones(4, 1);
        for (Divergence d : kAll)
            for (double tau : {0.5, 1.0, 3.0}) {
                INFO(rlpo::distill::to_string(d) << " tau=" << tau);
                const auto r = rlpo::distill::divergence(zf, zf, m4, opts_for(d, tau, false));
                if (d == Divergence::TVD) {
                    CHECK(r.value == 0.0);
                    CHECK(r.grad.cwiseAbs().maxCoeff() == 0.0f);
                } else {
                    CHECK(std::abs(r.value) < 1e-6);
                    CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-6f);
                }
            }
    }
    SECTION("JSD endpoints are exactly forward / reverse KL; interior is symmetric at 1/2") {
        DistillOptions o = DistillOptions::make(Divergence::JSD);
        o.beta = 0.0;
        const auto j0 = rlpo::distill::divergence(z, y, m, o);
        const auto f = rlpo::distill::forward_kl(z, y, m);
        CHECK(j0.value == f.value);
        CHECK(j0.grad == f.grad);
        o.beta = 1.0;
        const auto j1 = rlpo::distill::divergence(z, y, m, o);
        const auto rk = rlpo::distill::reverse_kl(z, y, m);
        CHECK(j1.value == rk.value);
        CHECK(j1.grad == rk.grad);
        o.beta = 0.5;
        CHECK(rlpo::distill::divergence(z, y, m, o).value ==
              Approx(rlpo::distill::divergence(y, z, m, o).value).epsilon(1e-12));
        // bounded by log 2 and continuous towards 0 (not towards KL) near the endpoints
        CHECK(rlpo::distill::divergence(z, y, m, o).value < std::log(2.0));
        o.beta = 1e-9;
        CHECK(rlpo::distill::divergence(z, y, m, o).value < 1e-6);
    }
    SECTION("skew KL: α = 0 is KL, α = 1 is 0; skew RKL: α = 0 is reverse KL") {
        DistillOptions o = DistillOptions::make(Divergence::SkewKL);
        o.alpha = 0.0;
        CHECK(rlpo::distill::divergence(z, y, m, o).value ==
              Approx(rlpo::distill::forward_kl(z, y, m).value).epsilon(1e-12));
        o.alpha = 1.0;
        CHECK(std::abs(rlpo::distill::divergence(z, y, m, o).value) < 1e-14);
        o = DistillOptions::make(Divergence::SkewReverseKL);
        o.alpha = 0.0;
        CHECK(rlpo::distill::divergence(z, y, m, o).value ==
              Approx(rlpo::distill::reverse_kl(z, y, m).value).epsilon(1e-12));
    }
    SECTION("Pinsker: TVD ≤ sqrt(KL/2); TVD ≤ 1") {
        rlpo::Normalizer sum;
        sum.mode = Aggregation::TokenSum;
        const Mat<double> one = Mat<double>::Ones(1, 1);
        for (Index i = 0; i < 6; ++i) {
            const double t = rlpo::distill::tvd(z.row(i), y.row(i), one, {}, sum).value;
            const double kl = rlpo::distill::forward_kl(z.row(i), y.row(i), one, {}, sum).value;
            CHECK(t <= std::sqrt(kl / 2) + 1e-12);
            CHECK(t <= 1.0);
        }
    }
    SECTION("temperature_squared multiplies value and gradient by τ²") {
        for (Divergence d : kAll) {
            const auto a = rlpo::distill::divergence(z, y, m, opts_for(d, 2.0, false));
            const auto b = rlpo::distill::divergence(z, y, m, opts_for(d, 2.0, true));
            CHECK(b.value == Approx(4 * a.value).epsilon(1e-12));
            CHECK(rlpo_test::max_rel_err(b.grad, Mat<double>(4 * a.grad)) < 1e-12);
        }
    }
    SECTION("closed form: two-point distributions") {
        Mat<double> zz(1, 2), yy(1, 2);
        zz << 0.0, 0.0;            // q = (1/2, 1/2)
        yy << std::log(3.0), 0.0;  // p = (3/4, 1/4)
        const Mat<double> one = Mat<double>::Ones(1, 1);
        const double fkl = 0.75 * std::log(1.5) + 0.25 * std::log(0.5);
        const double rkl = 0.5 * std::log(0.5 / 0.75) + 0.5 * std::log(0.5 / 0.25);
        CHECK(rlpo::distill::forward_kl(zz, yy, one).value == Approx(fkl).epsilon(1e-14));
        CHECK(rlpo::distill::reverse_kl(zz, yy, one).value == Approx(rkl).epsilon(1e-14));
        CHECK(rlpo::distill::tvd(zz, yy, one).value == Approx(0.25).epsilon(1e-14));
        const auto f = rlpo::distill::forward_kl(zz, yy, one);
        CHECK(f.grad(0, 0) == Approx(0.5 - 0.75).epsilon(1e-14));  // q − p
    }
}

TEST_CASE("distill divergences: micro-batches sum to the whole batch in every mode",
          "[distill][properties][microbatch]") {
    rt::Generator gen(8);
    const Index B = 7, T = 3, V = 33;
    const Mat<double> z = gen.logits(B * T, V), y = gen.logits(B * T, V);
    const Mat<double> mask = gen.mask(B, T, 1, true);
    for (Divergence d : kAll) {
        INFO(rlpo::distill::to_string(d));
        const DistillOptions o = opts_for(d, 1.5, true);
        rlpo_test::Invariance inv;
        inv.grad_rows_per_seq = T;
        inv.margin = 1e-15;
        inv.metrics = {rlpo::distill::to_string(d)};
        rlpo_test::require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::distill::divergence(z.middleRows(r0 * T, nr * T),
                                                 y.middleRows(r0 * T, nr * T),
                                                 mask.middleRows(r0, nr), o, n);
            },
            mask, inv);
    }
}

TEST_CASE("distill divergences: bad input gives the documented error", "[distill][bad-input]") {
    const Mat<double> z = Mat<double>::Zero(4, 5), m = Mat<double>::Ones(2, 2);
    const Mat<double> y3(3, 5);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl(z, y3, m),
                                    "distill::divergence(): teacher_logits: expected shape [4, 5]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl(z, z, Mat<double>::Ones(3, 1)),
                                    "mask: expected [B, T] with B*T = 4");
    Mat<double> neg = m;
    neg(1, 1) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl(z, z, neg),
                                    "mask: entries must be finite and >= 0");
    DistillOptions o;
    o.temperature = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::divergence(z, z, m, o),
                                    "temperature: must be > 0");
    o = DistillOptions::make(Divergence::JSD);
    o.beta = 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::divergence(z, z, m, o),
                                    "beta: must be in [0, 1]");
    o = DistillOptions::make(Divergence::SkewKL);
    o.alpha = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::divergence(z, z, m, o),
                                    "alpha: must be in [0, 1]");
    Mat<double> bad = z;
    bad(2, 3) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl(bad, z, m),
                                    "student_logits: NaN (NaN logits are rejected) at [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl(z, bad, m), "teacher_logits: NaN");
    Mat<double> masked = m;
    masked(1, 0) = 0;  // row 2 masked: its NaN is never read
    CHECK(std::isfinite(rlpo::distill::forward_kl(bad, z, masked).value));
    bad = z;
    bad(1, 0) = inf;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::reverse_kl(bad, z, m),
                                    "student_logits: +inf logit");
    bad.row(1).setConstant(-inf);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::distill::reverse_kl(z, bad, m),
        "teacher_logits: every logit is -inf (no distribution) in row 1");
    bad = z;
    bad(0, 0) = -inf;  // student has no mass where the teacher has: forward KL infinite
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::forward_kl(bad, z, m),
                                    "the divergence is infinite");
    CHECK(std::isfinite(rlpo::distill::jsd(bad, z, m).value));  // JSD stays finite
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::distill::parse_divergence("kld"),
                                    "valid names: forward_kl");
    CHECK(rlpo::distill::parse_divergence("rkl") == Divergence::ReverseKL);
    const auto empty = rlpo::distill::forward_kl(z, z, Mat<double>::Zero(2, 2));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero(0.0));
    // ignore_index → mask
    Eigen::Matrix<long long, 2, 2, Eigen::RowMajor> labels;
    labels << 5, -100, 7, 8;
    const Mat<float> lm = rlpo::distill::mask_from_labels(labels);
    CHECK(lm(0, 1) == 0.f);
    CHECK(lm.sum() == 3.f);
}
