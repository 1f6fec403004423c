// Clipped value loss and the SAFE double soft-min critic, four ways.
#include "policy/policy_support.hpp"

#include <rlpo/critic/value_loss.hpp>

using namespace policy_test;
using rlpo::critic::SAFECriticOptions;
using rlpo::critic::ValueLossOptions;
namespace rc = rlpo::critic;

namespace {
struct Critic {
    Mat<double> v, v2, old, R, mask;
};
Critic critic_batch(std::uint64_t seed, Index B = 8, Index T = 12) {
    rt::Generator gen(seed);
    Critic c;
    c.old = gen.normal(B, T);
    c.v = c.old + gen.normal(B, T, 0.6);  // inside and outside ±0.5 / ±0.2
    c.v2 = c.v + gen.normal(B, T, 0.5);
    c.R = c.old + gen.normal(B, T, 1.0);  // Huber: both quadratic and linear regions
    c.mask = gen.mask(B, T, 1, true);
    return c;
}
double safe_V(double a, double b, double alpha) {  // directly from the definition
    return -alpha * std::log(0.5 * (std::exp(-a / alpha) + std::exp(-b / alpha)));
}
}  // namespace

TEST_CASE("value_loss / safe_critic_loss: gradients equal central finite differences",
          "[policy][critic][fd]") {
    const Critic c = critic_batch(40);
    for (const auto& o :
         {ValueLossOptions::verl(), ValueLossOptions::trl(), ValueLossOptions::openrlhf()})
        for (Aggregation mode : rlpo_test::all_modes()) {
            const rlpo::Normalizer n = norm_for(mode, 2);
            const auto r = rc::value_loss(c.v, c.old, c.R, c.mask, o, n);
            const auto near_kink = [&](Index k) {
                return o.clip &&
                       std::abs(std::abs(c.v.data()[k] - c.old.data()[k]) - *o.clip) < 1e-4;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rc::value_loss(x, c.old, c.R, c.mask, o, n, rlpo::no_grad<double>())
                        .value;
                },
                c.v, r.grad, 1e-6, 1e-8, near_kink);
        }
    for (Aggregation mode : rlpo_test::all_modes()) {
        const rlpo::Normalizer n = norm_for(mode, 2);
        const SAFECriticOptions o;
        const auto r = rc::safe_critic_loss(c.v, c.v2, c.old, c.R, c.mask, o, n);
        const auto near_kink = [&](Index k) {
            const double V = safe_V(c.v.data()[k], c.v2.data()[k], o.alpha),
                         d = V - c.old.data()[k];
            const double Vc = c.old.data()[k] + std::clamp(d, -o.clip, o.clip);
            return std::abs(std::abs(d) - o.clip) < 1e-4 ||
                   std::abs(std::abs(V - c.R.data()[k]) - o.huber_delta) < 1e-4 ||
                   std::abs(std::abs(Vc - c.R.data()[k]) - o.huber_delta) < 1e-4;
        };
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                return rc::safe_critic_loss(x, c.v2, c.old, c.R, c.mask, o, n).value;
            },
            c.v, r.grad_v1, 1e-6, 1e-8, near_kink);
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                return rc::safe_critic_loss(c.v, x, c.old, c.R, c.mask, o, n).value;
            },
            c.v2, r.grad_v2, 1e-6, 1e-8, near_kink);
    }
}

TEMPLATE_TEST_CASE("value_loss / safe_critic_loss: agree with the PyTorch autograd reference",
                   "[policy][critic][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy", std::string("critic_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        bool safe;
        Mat<S> v, v2, old, R, mask;
        ValueLossOptions vo;
        SAFECriticOptions so;
        rlpo::Normalizer n;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 1700;
    SAFECriticOptions wide;
    wide.alpha = 2.0;
    wide.huber_delta = 0.1;
    wide.clip = 0.5;
    for (Aggregation mode : rlpo_test::all_modes()) {
        for (const auto& o :
             {ValueLossOptions::verl(), ValueLossOptions::trl(), ValueLossOptions::openrlhf()}) {
            const Critic c = critic_batch(seed++);
            Run r{false,
                  c.v.cast<S>(),
                  c.v2.cast<S>(),
                  c.old.cast<S>(),
                  c.R.cast<S>(),
                  c.mask.cast<S>(),
                  o,
                  {},
                  norm_for(mode, seed)};
            r.mask(2, 3) = 0;
            r.v(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& cs = ref.add<S>("value_loss");
            cs.in("values", r.v).in("old_values", r.old).in("returns", r.R).in("mask", r.mask);
            if (o.clip) cs.p("clip", *o.clip);
            put_norm(cs, r.n);
            runs.push_back(std::move(r));
        }
        for (const auto& o : {SAFECriticOptions{}, wide}) {
            const Critic c = critic_batch(seed++);
            Run r{true,
                  c.v.cast<S>(),
                  c.v2.cast<S>(),
                  c.old.cast<S>(),
                  c.R.cast<S>(),
                  c.mask.cast<S>(),
                  {},
                  o,
                  norm_for(mode, seed)};
            r.mask(2, 3) = 0;
            r.v2(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& cs = ref.add<S>("safe_critic_loss");
            cs.in("v1", r.v)
                .in("v2", r.v2)
                .in("old_values", r.old)
                .in("returns", r.R)
                .in("mask", r.mask);
            cs.p("alpha", o.alpha).p("huber_delta", o.huber_delta).p("clip", o.clip);
            put_norm(cs, r.n);
            runs.push_back(std::move(r));
        }
    }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        if (!r.safe) {
            const auto res = rc::value_loss(r.v, r.old, r.R, r.mask, r.vo, r.n);
            CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
            CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        } else {
            const auto res = rc::safe_critic_loss(r.v, r.v2, r.old, r.R, r.mask, r.so, r.n);
            CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
            CHECK(rlpo_test::max_rel_err(res.grad_v1, ref.out(k, "grad_v1")) < tol);
            CHECK(rlpo_test::max_rel_err(res.grad_v2, ref.out(k, "grad_v2")) < tol);
        }
        for (const char* name : {"vf_clipfrac", "vpred_mean"}) {
            INFO(name);
            const auto m =
                r.safe ? rc::safe_critic_loss(r.v, r.v2, r.old, r.R, r.mask, r.so, r.n).metrics
                       : rc::value_loss(r.v, r.old, r.R, r.mask, r.vo, r.n).metrics;
            CHECK(rlpo_test::rel_err(m[name], ref.scalar(k, name), 1e-12) < tol);
        }
    }
}

TEST_CASE("value_loss / safe_critic_loss: properties", "[policy][critic][properties]") {
    SECTION("inside the clip range the clipped loss is ½ MSE with gradient v − R") {
        const Critic c = critic_batch(41);
        const Mat<double> v = c.old.array() + 0.1;  // |v − v_old| = 0.1 < 0.5
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rc::value_loss(v, c.old, c.R, c.mask, ValueLossOptions::verl(), n);
        const auto plain = rc::value_loss(v, c.old, c.R, c.mask, ValueLossOptions::openrlhf(), n);
        CHECK(r.value ==
              Approx(0.5 * (c.mask.array() * (v - c.R).array().square()).sum()).epsilon(1e-13));
        CHECK(rlpo_test::max_rel_err(r.grad, plain.grad) < 1e-15);
        CHECK(r.metrics["vf_clipfrac"] == 0.0);
    }
    SECTION(
        "clipped branch: v moved away from R beyond c keeps its gradient, v moved towards R past c "
        "loses it") {
        Mat<double> v(1, 2), old = Mat<double>::Zero(1, 2), R = Mat<double>::Constant(1, 2, 1.0),
                             m = Mat<double>::Ones(1, 2);
        v << 2.0, -2.0;  // both clipped to ±0.5
        rlpo::Normalizer n;
        n.mode = Aggregation::TokenSum;
        const auto r = rc::value_loss(v, old, R, m, ValueLossOptions::verl(), n);
        // v = 2: (2−1)² = 1 vs (0.5−1)² = 0.25 → unclipped, gradient 1. v = −2: 9 vs 0.25 → unclipped, −3.
        CHECK(r.grad(0, 0) == Approx(1.0));
        CHECK(r.grad(0, 1) == Approx(-3.0));
        Mat<double> far_R = Mat<double>::Constant(1, 2, 5.0);
        v << 3.0, 3.0;  // towards R = 5 past c: (3−5)² = 4 < (0.5−5)² = 20.25 → clipped, gradient 0
        const auto q = rc::value_loss(v, old, far_R, m, ValueLossOptions::verl(), n);
        CHECK(q.grad.isZero());
        CHECK(q.metrics["vf_clipfrac"] == 1.0);
    }
    SECTION("soft-min: between min and mean, → min as α → 0, → mean as α → ∞; weights sum to 1") {
        const Mat<double> a = Mat<double>::Constant(1, 1, 1.0),
                          b = Mat<double>::Constant(1, 1, 3.0);
        const Mat<double> m = Mat<double>::Ones(1, 1);
        for (double alpha : {1e-3, 0.3, 1e3}) {
            SAFECriticOptions o;
            o.alpha = alpha;
            const auto r = rc::safe_critic_loss(a, b, a, a, m, o);
            const double V = r.metrics["vpred_mean"];
            CHECK(V >= 1.0 - 1e-12);
            CHECK(V <= 2.0 + 1e-12);
            if (alpha == 1e-3) CHECK(V == Approx(1.0 + 1e-3 * std::log(2.0)).epsilon(1e-9));
            if (alpha == 1e3) CHECK(V == Approx(2.0).epsilon(1e-3));
        }
        SAFECriticOptions o;
        const Critic c = critic_batch(42);
        const auto r = rc::safe_critic_loss(c.v, c.v2, c.old, c.R, c.mask, o);
        // ∂/∂v1 + ∂/∂v2 is the gradient w.r.t. a common shift of both heads = ∂loss/∂V
        const auto shifted = [&](double h) {
            return rc::safe_critic_loss(Mat<double>(c.v.array() + h), Mat<double>(c.v2.array() + h),
                                        c.old, c.R, c.mask, o)
                .value;
        };
        const double fd = (shifted(1e-6) - shifted(-1e-6)) / 2e-6;
        CHECK((r.grad_v1 + r.grad_v2).sum() == Approx(fd).epsilon(1e-6));
    }
    SECTION("micro-batches with global counts add up to the whole batch") {
        const Critic c = critic_batch(43);
        require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rc::value_loss(c.v.middleRows(r0, nr), c.old.middleRows(r0, nr),
                                      c.R.middleRows(r0, nr), c.mask.middleRows(r0, nr),
                                      ValueLossOptions::verl(), n);
            },
            c.mask);
    }
}

TEST_CASE("value_loss / safe_critic_loss: bad input gives the documented error",
          "[policy][critic][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rc::value_loss(x, y, x, m),
        "critic::value_loss(): old_values: expected shape [2, 3] (same as values), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::value_loss(x, x, y, m), "returns: expected shape");
    ValueLossOptions o;
    o.clip = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::value_loss(x, x, x, m, o), "clip: must be > 0");
    Mat<double> bad = x;
    bad(0, 0) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::value_loss(x, bad, x, m), "old_values: NaN at [0, 0]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::value_loss(x, x, bad, m), "returns: NaN at [0, 0]");
    {
        // finite float inputs whose (v − R)² overflows float: the loss is computed in float
        Mat<float> vf = Mat<float>::Zero(2, 3), rf = vf;
        vf(1, 2) = 1e20f;
        rf(1, 2) = -1e20f;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::value_loss(vf, vf, rf, Mat<float>(m.cast<float>())),
                                        "inputs at [1, 2] give a non-finite loss or gradient");
        // the same in double is finite
        CHECK(std::isfinite(rc::value_loss(Mat<double>(vf.cast<double>()),
                                           Mat<double>(vf.cast<double>()),
                                           Mat<double>(rf.cast<double>()), m)
                                .value));
    }
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::safe_critic_loss(x, y, x, x, m),
                                    "critic::safe_critic_loss(): v2: expected shape");
    SAFECriticOptions s;
    s.alpha = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::safe_critic_loss(x, x, x, x, m, s), "alpha: must be > 0");
    s = {};
    s.huber_delta = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::safe_critic_loss(x, x, x, x, m, s),
                                    "huber_delta: must be > 0");
    s = {};
    s.clip = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::safe_critic_loss(x, x, x, x, m, s), "clip: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rc::safe_critic_loss(x, bad, x, x, m), "v2: NaN at [0, 0]");
    const auto empty = rc::value_loss(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
}
