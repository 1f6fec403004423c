// PPO clip, four ways: finite differences, PyTorch autograd, properties, bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#if defined(RLPO_USE_OPENMP)
#endif

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::policy::PPOClipOptions;
namespace rt = rlpo::testing;
constexpr double inf = std::numeric_limits<double>::infinity();

namespace {
struct Batch {
    Mat<double> logp, old, adv, mask;
};
// Ratios spread over every region: inside, below 1−ε_l, above 1+ε_h, beyond the dual-clip c,
// beyond the ±20 clamp; advantages of both signs and zero.
Batch spread_batch(std::uint64_t seed, Index B = 8, Index T = 16) {
    rt::Generator gen(seed);
    Batch b;
    b.logp = gen.logprobs(B, T);
    b.old = b.logp;
    for (Index k = 0; k < b.old.size(); ++k) {
        const double u = gen.uniform();
        double lr;
        if (u < 0.4)
            lr = gen.uniform(-0.15, 0.15);
        else if (u < 0.6)
            lr = gen.uniform(-1.5, -0.3);
        else if (u < 0.8)
            lr = gen.uniform(0.3, 1.6);  // r up to ~5 > c = 3
        else if (u < 0.9)
            lr = gen.uniform(20.5, 25.0) * (gen.uniform() < 0.5 ? -1 : 1);
        else
            lr = gen.uniform(-3.0, 3.0);
        b.old.data()[k] = b.logp.data()[k] - lr;
    }
    b.adv = gen.normal(B, T);
    b.adv(0, 0) = 0.0;
    b.mask = gen.mask(B, T, 1, true);
    return b;
}
}  // namespace

TEST_CASE("ppo_clip: gradient equals central finite differences", "[policy][ppo_clip][fd]") {
    const Batch b = spread_batch(21);
    PPOClipOptions both = PPOClipOptions::verl();  // two-sided δ and dual-clip together
    both.two_sided_delta = 2.5;
    for (const auto& opts : {PPOClipOptions{}, PPOClipOptions::verl(), PPOClipOptions::dapo(),
                             PPOClipOptions::trl(), PPOClipOptions::intellect2(), both}) {
        for (Aggregation mode : rlpo_test::all_modes()) {
            rlpo::Normalizer n;
            n.mode = mode;
            const auto r = rlpo::policy::ppo_clip(b.logp, b.old, b.adv, b.mask, opts, n);
            // Skip positions within the FD step of a kink (clip bounds, dual-clip c, clamp).
            const auto near_kink = [&](Index k) {
                const double lr = b.logp.data()[k] - b.old.data()[k];
                const double r_ = std::exp(lr);
                return std::abs(r_ - (1 - opts.clip_low)) < 1e-4 ||
                       std::abs(r_ - (1 + opts.clip_high)) < 1e-4 ||
                       (opts.dual_clip && std::abs(r_ - *opts.dual_clip) < 1e-4) ||
                       (opts.two_sided_delta && std::abs(r_ - *opts.two_sided_delta) < 1e-4) ||
                       std::abs(std::abs(lr) - 20.0) < 1e-4;
            };
            rlpo_test::require_fd_gradient(
                [&](const Mat<double>& x) {
                    return rlpo::policy::ppo_clip(x, b.old, b.adv, b.mask, opts, n,
                                                  rlpo::no_grad<double>())
                        .value;
                },
                b.logp, r.grad, 1e-6, 1e-10, near_kink);
        }
    }
}

TEMPLATE_TEST_CASE("ppo_clip: agrees with the PyTorch autograd reference",
                   "[policy][ppo_clip][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy",
                                  std::string("ppo_clip_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, adv, mask;
        PPOClipOptions opts;
        rlpo::Normalizer norm;
        std::size_t idx;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 100;
    std::vector<PPOClipOptions> option_sets{PPOClipOptions{}, PPOClipOptions::verl(),
                                            PPOClipOptions::dapo(), PPOClipOptions::trl()};
    PPOClipOptions wide;
    wide.clip_low = 0.1;
    wide.clip_high = 0.5;
    wide.dual_clip = 1.5;
    wide.log_ratio_clamp = 2.0;  // clamp region exercised on ordinary ratios too
    option_sets.push_back(wide);
    option_sets.push_back(PPOClipOptions::intellect2());
    PPOClipOptions delta_dual = PPOClipOptions::verl();
    delta_dual.two_sided_delta = 2.0;  // δ below c = 3: both regions present
    option_sets.push_back(delta_dual);
    for (const auto& opts : option_sets)
        for (Aggregation mode : rlpo_test::all_modes()) {
            const Batch b = spread_batch(seed++);
            Run r{
                b.logp.cast<S>(), b.old.cast<S>(), b.adv.cast<S>(), b.mask.cast<S>(), opts, {}, 0};
            r.norm.mode = mode;
            if (mode == Aggregation::SeqMeanTokenSumNorm) r.norm.norm_constant = 40.0;
            if (seed % 3 == 0) r.norm.num_tokens = 1000.0, r.norm.num_seqs = 50.0;
            // Adversarial: −inf current log-prob (ratio → 0, clamped), masked garbage. Without a
            // clamp ppo_kl (the mean of −lr) is +inf: rejected (see the bad-input test)
            if (std::isfinite(opts.log_ratio_clamp))
                r.logp(1, 1) = -std::numeric_limits<S>::infinity();
            r.mask(1, 1) = 1;
            r.mask(2, 3) = 0;
            r.logp(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& c = ref.add<S>("ppo_clip");
            c.in("logp", r.logp).in("old_logp", r.old).in("advantages", r.adv).in("mask", r.mask);
            c.p("clip_low", opts.clip_low).p("clip_high", opts.clip_high);
            c.p("log_ratio_clamp", opts.log_ratio_clamp);
            if (opts.dual_clip) c.p("dual_clip", *opts.dual_clip);
            if (opts.two_sided_delta) c.p("two_sided_delta", *opts.two_sided_delta);
            c.s("agg", rlpo::to_string(mode));
            if (r.norm.num_tokens) c.p("num_tokens", *r.norm.num_tokens);
            if (r.norm.num_seqs) c.p("num_seqs", *r.norm.num_seqs);
            if (r.norm.norm_constant) c.p("norm_constant", *r.norm.norm_constant);
            r.idx = ref.size() - 1;
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (const auto& r : runs) {
        INFO("case " << r.idx);
        // (the torch reference cannot take −inf with clamp off: skip those cases' -inf token)
        const auto res = rlpo::policy::ppo_clip(r.logp, r.old, r.adv, r.mask, r.opts, r.norm);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(r.idx, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(r.idx, "grad")) < tol);
        for (const char* name : {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"}) {
            INFO(name);
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(r.idx, name), 1e-12) < tol);
        }
    }
}

TEST_CASE("ppo_clip: properties", "[policy][ppo_clip][properties]") {
    rt::Generator gen(4);
    const Mat<double> logp = gen.logprobs(5, 7), A = gen.normal(5, 7);
    const Mat<double> m = gen.mask(5, 7, 2);
    const double N = m.sum();
    SECTION("ratio = 1 reduces to −mean A, gradient −A/N, nothing clipped") {
        const auto r = rlpo::policy::ppo_clip(logp, logp, A, m, PPOClipOptions::verl());
        CHECK(r.value == Approx(-(A.array() * m.array()).sum() / N).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(r.grad, Mat<double>(-(A.array() * m.array()) / N)) < 1e-14);
        CHECK(r.metrics["pg_clipfrac"] == 0.0);
        CHECK(r.metrics["ppo_kl"] == 0.0);
    }
    SECTION("clip-higher: a positive advantage is clipped at 1+ε_h, not 1+ε_l") {
        Mat<double> lp(1, 2), old(1, 2), a(1, 2), mk = Mat<double>::Ones(1, 2);
        lp << std::log(1.25), std::log(1.25);
        old.setZero();
        a << 1.0, -1.0;
        auto o = PPOClipOptions::dapo();  // 0.2 / 0.28
        const auto r = rlpo::policy::ppo_clip(lp, old, a, mk, o, {});
        // A>0, r=1.25 < 1.28: unclipped, gradient −r/N. A<0, r=1.25: −A·r = 1.25 > −A·clip = 1.2.
        CHECK(r.grad(0, 0) == Approx(-1.25 / 2));
        CHECK(r.grad(0, 1) == Approx(1.25 / 2));
        CHECK(r.metrics["pg_clipfrac"] == 0.0);
        const auto sym = rlpo::policy::ppo_clip(lp, old, a, mk, PPOClipOptions{}, {});
        CHECK(sym.grad(0, 0) == 0.0);  // clipped at 1.2 with symmetric ε
        CHECK(sym.metrics["pg_clipfrac"] == 0.5);
    }
    SECTION("dual-clip: for A<0 and r > c the loss is −A·c with zero gradient") {
        Mat<double> lp(1, 2), old = Mat<double>::Zero(1, 2), a(1, 2), mk = Mat<double>::Ones(1, 2);
        lp << std::log(5.0), std::log(5.0);
        a << -2.0, 2.0;
        const auto r = rlpo::policy::ppo_clip(lp, old, a, mk, PPOClipOptions::verl(), {});
        CHECK(r.value == Approx((2.0 * 3.0 + -2.0 * 1.2) / 2));
        CHECK(r.grad(0, 0) == 0.0);
        CHECK(r.grad(0, 1) == 0.0);  // A>0 clipped at 1.2
        CHECK(r.metrics["pg_clipfrac_lower"] == 0.5);
        const auto off = rlpo::policy::ppo_clip(lp, old, a, mk, PPOClipOptions{}, {});
        CHECK(off.grad(0, 0) == Approx(2.0 * 5.0 / 2));  // unbounded without dual-clip
        CHECK(off.metrics["pg_clipfrac_lower"] == 0.0);
    }
    SECTION("log-ratio clamp: beyond ±L the ratio is exp(±L) and the gradient is 0") {
        Mat<double> lp(1, 2), old = Mat<double>::Zero(1, 2), a = Mat<double>::Ones(1, 2);
        lp << 25.0, -30.0;
        a(0, 1) = -1.0;
        const auto r =
            rlpo::policy::ppo_clip(lp, old, a, Mat<double>::Ones(1, 2), PPOClipOptions{}, {});
        CHECK(r.grad.isZero());
        CHECK(r.metrics["ppo_kl"] == Approx((-20.0 + 20.0) / 2));
        const auto neg = rlpo::policy::ppo_clip(
            Mat<double>::Constant(1, 1, -inf), Mat<double>::Zero(1, 1),
            Mat<double>::Constant(1, 1, -1.0), Mat<double>::Ones(1, 1), PPOClipOptions{}, {});
        CHECK(neg.value ==
              Approx(-(-1.0) * 0.8));  // r = e^-20 → clipped to 0.8 (A<0: max picks 0.8)
        CHECK(neg.grad(0, 0) == 0.0);
    }
    SECTION(
        "two-sided δ (INTELLECT-2): A<0 and r > δ gives −A·δ with zero gradient; A>0 unaffected") {
        Mat<double> lp(1, 4), old = Mat<double>::Zero(1, 4), a(1, 4), mk = Mat<double>::Ones(1, 4);
        lp << std::log(6.0), std::log(6.0), std::log(3.0), std::log(0.5);
        a << -1.0, 1.0, -1.0, 1.0;
        PPOClipOptions o = PPOClipOptions::intellect2();  // δ = 4, ε = 0.2
        const auto r = rlpo::policy::ppo_clip(lp, old, a, mk, o, {});
        // token 0: max(−A·min(6,4), −A·1.2) = 4; token 1: max(−6, −1.2) = −1.2 (clipped);
        // token 2: r = 3 < δ: −A·r = 3, gradient r/N; token 3: r = 0.5: −0.5, gradient −r/N.
        CHECK(r.value == Approx((4.0 - 1.2 + 3.0 - 0.5) / 4));
        CHECK(r.grad(0, 0) == 0.0);
        CHECK(r.grad(0, 1) == 0.0);
        CHECK(r.grad(0, 2) == Approx(3.0 / 4));
        CHECK(r.grad(0, 3) == Approx(-0.5 / 4));
        CHECK(r.metrics["pg_clipfrac"] == Approx(0.25));  // only token 1 (l2 > l1)
        CHECK(r.metrics["pg_clipfrac_lower"] == 0.0);     // δ is not the dual-clip
        const auto off = rlpo::policy::ppo_clip(lp, old, a, mk, PPOClipOptions::trl(), {});
        CHECK(off.grad(0, 0) == Approx(6.0 / 4));  // unbounded without δ
        CHECK(off.grad(0, 1) == r.grad(0, 1));
        CHECK(off.grad(0, 3) == r.grad(0, 3));
        // at r = δ exactly (a tie inside torch.clamp's inclusive bound) the gradient passes
        Mat<double> at(1, 1), neg = Mat<double>::Constant(1, 1, -1.0);
        at << std::log(4.0);
        const auto tie = rlpo::policy::ppo_clip(at, Mat<double>::Zero(1, 1), neg,
                                                Mat<double>::Ones(1, 1), o, {});
        CHECK(tie.value == Approx(4.0));
    }
    SECTION(
        "long rows (several vectorised chunks, ragged tail): float matches double, threads "
        "irrelevant") {
        rt::Generator g2(9);
        const Index B = 5, T = 1100;  // 1100 = 2·512 + 76: two full chunks and a tail
        Mat<double> lp2 = g2.logprobs(B, T), old2 = g2.perturbed(lp2, 0.5), a2 = g2.normal(B, T);
        Mat<double> m2 = g2.mask(B, T, 1, true);
        const auto rd = rlpo::policy::ppo_clip(lp2, old2, a2, m2, PPOClipOptions::verl());
        const Mat<float> lpf = lp2.cast<float>(), oldf = old2.cast<float>(), af = a2.cast<float>(),
                         mf = m2.cast<float>();
        const auto rf = rlpo::policy::ppo_clip(lpf, oldf, af, mf, PPOClipOptions::verl());
        // the double run is the exact answer for the float-rounded inputs up to the rounding
        // of those inputs; compare with the double run on the same rounded inputs
        const auto rd_same = rlpo::policy::ppo_clip(
            Mat<double>(lpf.cast<double>()), Mat<double>(oldf.cast<double>()),
            Mat<double>(af.cast<double>()), Mat<double>(mf.cast<double>()), PPOClipOptions::verl());
        CHECK(rlpo_test::rel_err(rf.value, rd_same.value) < 1e-5);
        CHECK(rlpo_test::max_rel_err(rf.grad, rd_same.grad) < 1e-5);
        CHECK(std::isfinite(rd.value));
        // gradient destinations: write_to, add_to (twice = 2×), coefficient scales value and gradient
        Mat<double> buf = Mat<double>::Constant(B, T, 7.0);
        const auto rw = rlpo::policy::ppo_clip(lp2, old2, a2, m2, PPOClipOptions::verl(), {},
                                               rlpo::write_to(buf, 0.5));
        CHECK(rw.value == Approx(0.5 * rd.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(buf, Mat<double>(0.5 * rd.grad)) < 1e-14);
        Mat<double> acc = Mat<double>::Zero(B, T);
        rlpo::policy::ppo_clip(lp2, old2, a2, m2, PPOClipOptions::verl(), {}, rlpo::add_to(acc));
        rlpo::policy::ppo_clip(lp2, old2, a2, m2, PPOClipOptions::verl(), {}, rlpo::add_to(acc));
        CHECK(rlpo_test::max_rel_err(acc, Mat<double>(2.0 * rd.grad)) < 1e-14);
        // a NaN under the mask deep in the second chunk is still found and named
        Mat<double> bad = lp2;
        m2(3, 700) = 1;
        bad(3, 700) = std::numeric_limits<double>::quiet_NaN();
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(bad, old2, a2, m2),
                                        "logp: NaN at [3, 700]");
    }
    SECTION(
        "micro-batches with global counts sum to the whole batch; any thread count, same bits") {
        rt::Generator g3(12);
        const Index B = 40, T = 1100;  // B·T > the parallel threshold
        const Mat<float> lp3 = g3.logprobs<float>(B, T), old3 = g3.perturbed<float>(lp3, 0.6);
        const Mat<float> a3 = g3.normal<float>(B, T), m3 = g3.mask<float>(B, T, 1, true);
        rlpo_test::Invariance inv;
        inv.bitwise_grad = true;  // rows never split: bitwise equal
        inv.metrics = {"pg_clipfrac"};
        rlpo_test::require_micro_batch_invariance(
            [&](Index r0, Index nr, const rlpo::Normalizer& n) {
                return rlpo::policy::ppo_clip(
                    Mat<float>(lp3.middleRows(r0, nr)), Mat<float>(old3.middleRows(r0, nr)),
                    Mat<float>(a3.middleRows(r0, nr)), Mat<float>(m3.middleRows(r0, nr)),
                    PPOClipOptions::verl(), n);
            },
            m3, inv);
        const auto run = [&] {
            return rlpo::policy::ppo_clip(lp3, old3, a3, m3, PPOClipOptions::verl());
        };
        const auto one = rlpo_test::with_threads(1, run), three = rlpo_test::with_threads(3, run);
        CHECK(one.value == three.value);
        CHECK(one.grad == three.grad);
        CHECK(one.metrics["pg_clipfrac"] == three.metrics["pg_clipfrac"]);
    }
    SECTION("masked positions: gradient exactly 0 and their inputs never read") {
        Mat<double> lp = logp, mk = m;
        mk(0, 0) = 0;
        lp(0, 0) = std::numeric_limits<double>::quiet_NaN();
        const auto r = rlpo::policy::ppo_clip(lp, logp, A, mk);
        CHECK(r.grad(0, 0) == 0.0);
        CHECK(std::isfinite(r.value));
    }
}

TEST_CASE("ppo_clip: bad input gives the documented error", "[policy][ppo_clip][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3);
    const Mat<double> y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::ppo_clip(x, y, x, m),
        "policy::ppo_clip(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, y, m),
                                    "advantages: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, x, y), "mask: expected shape");
    PPOClipOptions o;
    o.clip_low = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, x, m, o), "clip_low: must be > 0");
    o.clip_low = 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, x, m, o),
                                    "clip_low: must be < 1 (the lower clip 1 − clip_low must be a "
                                    "positive ratio), given 1.5");
    o = {};
    o.clip_high = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, x, m, o),
                                    "clip_high: must be > 0");
    o = {};
    o.dual_clip = 1.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, x, m, o),
                                    "dual_clip: the constant c must be > 1");
    o = {};
    o.two_sided_delta = 1.2;  // must exceed 1 + ε_h = 1.2
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, x, m, o),
                                    "two_sided_delta: δ must be > 1 + clip_high");
    o = {};
    o.log_ratio_clamp = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, x, m, o), "log_ratio_clamp");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(bad, x, x, m), "logp: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(x, x, bad, m),
                                    "advantages: NaN at [1, 2]");
    Mat<double> ninf = Mat<double>::Constant(2, 3, -inf);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::policy::ppo_clip(ninf, ninf, x, m),
                                    "non-finite loss or gradient");
    // logp = −inf without a clamp: loss and gradient have their limits, but ppo_kl = +inf
    RLPO_REQUIRE_NUMERICAL_ERROR(rlpo::policy::ppo_clip(ninf, x, x, m, PPOClipOptions::trl()),
                                 "metric 'ppo_kl' is not finite");
    // with the clamp the same input is accepted: finite value, gradient and metrics
    const auto clamped = rlpo::policy::ppo_clip(ninf, x, x, m);
    CHECK(std::isfinite(clamped.value));
    CHECK(clamped.grad.allFinite());
    CHECK(std::isfinite(clamped.metrics["ppo_kl"]));
    const auto empty = rlpo::policy::ppo_clip(x, x, x, Mat<double>::Zero(2, 3));
    CHECK(empty.value == 0.0);
    CHECK(empty.grad.isZero());
}
