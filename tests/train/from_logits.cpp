// The training step from logits (train/from_logits.hpp): finite differences of the whole loss
// w.r.t. the logits (log-probs formed by a hand-written log-softmax), the composition by hand,
// and bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"

#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/testing/random.hpp>
#include <rlpo/train/from_logits.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::train::StepInputs;
using rlpo::train::StepOptions;
using rlpo::train::TrainingStep;

namespace {

using Labels = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// log softmax(z_n / τ)[y] by plain loops (the test's own formula).
Mat<double> hand_logp(const Mat<double>& z, const Labels& y, const Mat<double>& mask, double tau) {
    const Index B = mask.rows(), T = mask.cols();
    Mat<double> lp = Mat<double>::Zero(B, T);
    for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t) {
            if (mask(b, t) == 0) continue;
            const Index n = b * T + t;
            double mx = -std::numeric_limits<double>::infinity();
            for (Index j = 0; j < z.cols(); ++j) mx = std::max(mx, z(n, j) / tau);
            double s = 0;
            for (Index j = 0; j < z.cols(); ++j) s += std::exp(z(n, j) / tau - mx);
            lp(b, t) = z(n, y(b, t)) / tau - mx - std::log(s);
        }
    return lp;
}

struct Data {
    Mat<double> z, mask, old, ref, adv;
    Labels y;
};

Data make(std::uint64_t seed, Index B, Index T, Index V, double tau) {
    rlpo::testing::Generator gen(seed);
    Data d;
    d.z = gen.normal<double>(B * T, V, 1.5);
    d.mask = Mat<double>::Ones(B, T);
    d.mask(B - 1, T - 1) = 0;
    d.y.resize(B, T);
    for (Index b = 0; b < B; ++b)
        for (Index t = 0; t < T; ++t)
            d.y(b, t) = static_cast<std::int64_t>(gen.uniform() * static_cast<double>(V)) % V;
    d.y(B - 1, T - 1) = -100;  // masked: never checked
    d.z.row(B * T - 1).setConstant(std::numeric_limits<double>::quiet_NaN());
    const Mat<double> lp = hand_logp(d.z, d.y, d.mask, tau);
    d.old = lp + 0.02 * gen.normal<double>(B, T);  // ratios well inside the clip range
    d.ref = lp + 0.5 * gen.normal<double>(B, T);
    d.adv = gen.normal<double>(B, T);
    return d;
}

StepOptions options() {
    StepOptions o;
    o.kl = rlpo::penalties::KLOptions::verl();
    o.entropy_coef = 0.01;
    return o;
}

}  // namespace

TEST_CASE("step_from_logits: gradient w.r.t. the logits equals finite differences",
          "[train][logits][fd]") {
    for (const double tau : {1.0, 0.7}) {
        INFO("tau " << tau);
        const Data d = make(5, 2, 3, 6, tau);
        const TrainingStep<double> step(options());
        StepInputs<double> in;
        in.logits = d.z;
        in.mask = d.mask;
        in.old_logp = d.old;
        in.ref_logp = d.ref;
        in.advantages = d.adv;
        const auto r = rlpo::train::step_from_logits(step, in, d.y, tau);
        CHECK(rlpo_test::max_rel_err(r.logp, hand_logp(d.z, d.y, d.mask, tau)) < 1e-13);
        CHECK(r.grad_logits.row(5).isZero(0.0));
        const auto loss_of = [&](const Mat<double>& z) {
            StepInputs<double> x;
            const Mat<double> lp = hand_logp(z, d.y, d.mask, tau);
            x.logp = lp;
            x.logits = z;
            x.mask = d.mask;
            x.old_logp = d.old;
            x.ref_logp = d.ref;
            x.advantages = d.adv;
            return step(x).loss;
        };
        CHECK(std::abs(loss_of(d.z) - r.loss) < 1e-13);
        rlpo_test::require_fd_gradient(loss_of, d.z, r.grad_logits, 1e-6, 1e-9,
                                       [&](Index k) { return k / 6 == 5; });
    }
}

TEST_CASE("step_from_logits: equals the composition by hand", "[train][logits]") {
    const Data d = make(6, 3, 4, 2500, 1.0);
    const TrainingStep<double> step(options());
    StepInputs<double> in;
    in.logits = d.z;
    in.mask = d.mask;
    in.old_logp = d.old;
    in.ref_logp = d.ref;
    in.advantages = d.adv;
    const auto r = rlpo::train::step_from_logits(step, in, d.y);
    const auto fwd = rlpo::logits::token_logps(d.z, d.y, d.mask);
    StepInputs<double> x;
    x.logp = fwd.logp;
    x.logits = d.z;
    x.mask = d.mask;
    x.old_logp = d.old;
    x.ref_logp = d.ref;
    x.advantages = d.adv;
    const auto s = step(x);
    const auto b = rlpo::logits::token_logps_backward(d.z, d.y, d.mask, fwd, s.grad_logp);
    CHECK(r.loss == s.loss);
    CHECK(r.grad_logp == s.grad_logp);
    CHECK(rlpo_test::max_rel_err(r.grad_logits, Mat<double>(s.grad_logits + b.grad)) < 1e-14);
    // without logits terms the log-softmax's gradient is the whole logits gradient
    StepOptions plain;
    const TrainingStep<double> step2(plain);
    StepInputs<double> in2;
    in2.logits = d.z;
    in2.mask = d.mask;
    in2.old_logp = d.old;
    in2.advantages = d.adv;
    const auto r2 = rlpo::train::step_from_logits(step2, in2, d.y);
    const auto b2 = rlpo::logits::token_logps_backward(d.z, d.y, d.mask, fwd, r2.grad_logp);
    CHECK(r2.grad_logits == b2.grad);
}

TEST_CASE("step_from_logits: bad input", "[train][logits][errors]") {
    const Data d = make(7, 2, 3, 6, 1.0);
    const TrainingStep<double> step(options());
    StepInputs<double> in;
    in.mask = d.mask;
    in.old_logp = d.old;
    in.ref_logp = d.ref;
    in.advantages = d.adv;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::train::step_from_logits(step, in, d.y),
                                    "logits: required");
    in.logits = d.z;
    Labels y = d.y;
    y(0, 0) = 6;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::train::step_from_logits(step, in, y),
                                    "is outside [0, 6)");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::train::step_from_logits(step, in, d.y, 0.0),
                                    "temperature");
    in.logp = d.old;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::train::step_from_logits(step, in, d.y),
                                    "logp: must be unset");
    StepInputs<double> nomask;
    nomask.logits = d.z;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::train::step_from_logits(step, nomask, d.y),
                                    "mask: required");
}
