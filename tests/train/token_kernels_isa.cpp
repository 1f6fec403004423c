// The token kernels' SIMD paths: PPO clip (plain, verl's dual clip, dual clip with the
// two-sided δ), the KL penalty (k3 with its clamps, abs), the clipped value loss and the
// training step's single pass, on inputs through every branch (ratios inside and outside the
// clip, beyond the dual-clip c and the ±20 clamp, advantages of both signs and zero, k3 beyond
// its value clamp, values inside and outside the value clip), float and double, against a
// scalar reference in double written here from the documented formulas; and the step's single
// pass equal, bit for bit, to its parts. Built for the baseline ISA and again for fixed x86-64
// instruction sets (tests/CMakeLists.txt), where the AVX-512 variants take the compares and
// selects in mask registers (`simd::LaneMask`).
#include "support/catch.hpp"

#include <rlpo/critic/value_loss.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/testing/random.hpp>
#include <rlpo/train/step.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

using rlpo::Index;
using rlpo::Mat;
namespace rt = rlpo::testing;

namespace {

constexpr Index kB = 6, kT = 53;  // (a partial last packet in every row)

struct Inputs {
    Mat<double> logp, old, ref, adv, mask, values, old_values, returns;
};

Inputs make_inputs(std::uint64_t seed) {
    rt::Generator gen(seed);
    Inputs in;
    in.logp = gen.logprobs(kB, kT);
    in.old = in.logp;
    in.ref = in.logp;
    in.adv = gen.normal(kB, kT);
    in.values = gen.normal(kB, kT);
    in.old_values = in.values;
    in.returns = gen.normal(kB, kT);
    for (Index k = 0; k < in.old.size(); ++k) {
        const double u = gen.uniform();
        double lr;  // logp − old_logp
        if (u < 0.3)
            lr = gen.uniform(-0.15, 0.15);  // inside the clip
        else if (u < 0.5)
            lr = gen.uniform(-1.5, -0.3);  // below 1 − ε
        else if (u < 0.7)
            lr = gen.uniform(0.3, 1.6);  // above 1 + ε, beyond c = 3 and δ = 2.5
        else if (u < 0.8)
            lr = gen.uniform(20.5, 25.0) * (gen.uniform() < 0.5 ? -1 : 1);  // the clamp
        else
            lr = gen.uniform(-3.0, 3.0);
        in.old.data()[k] = in.logp.data()[k] - lr;
        // logp − ref: small, beyond k3's value clamp (δ = ref − logp ≈ 3 gives e^δ − δ − 1 ≈
        // 16 > 10), and beyond the ±20 clamp
        const double w = gen.uniform();
        const double d = w < 0.6   ? gen.uniform(-1.0, 1.0)
                         : w < 0.8 ? gen.uniform(-4.0, -2.5)
                                   : gen.uniform(20.5, 24.0) * (gen.uniform() < 0.5 ? -1 : 1);
        in.ref.data()[k] = in.logp.data()[k] - d;
        // values moved from the old values inside or outside the clip ±0.5
        in.old_values.data()[k] = in.values.data()[k] - gen.uniform(-1.2, 1.2);
        if (gen.uniform() < 0.1) in.adv.data()[k] = 0.0;
    }
    in.mask = gen.mask(kB, kT, 1, true);
    return in;
}

template <class S>
Mat<S> as(const Mat<double>& x) {
    return x.cast<S>();
}

// The scalar references: per-token loss and ∂/∂(logp or values), and the per-token stats.
struct Token {
    double loss, grad;
    double s0 = 0, s1 = 0, s2 = 0;
};

// PPO clip (verl's compute_policy_loss_vanilla): r = exp(clamp(lr, ±L));
// l = max(−A r, −A clip(r, 1−ε_l, 1+ε_h)) (−A min(r, δ) in the first term with δ);
// for A < 0 with the dual clip: min(l, −A c). Ties split the gradient as torch.maximum /
// minimum; the clamp stops it outside [−L, L].
Token ppo_token(double a, double lr_raw, const rlpo::policy::PPOClipOptions& o) {
    const double L = o.log_ratio_clamp;
    const double lr = std::min(std::max(lr_raw, -L), L);
    const double r = std::exp(lr);
    const double dr = (lr_raw >= -L && lr_raw <= L) ? -a * r : 0.0;  // ∂(−A r)/∂logp
    double l1 = -a * r, g1 = dr;
    if (o.two_sided_delta && r > *o.two_sided_delta) {
        l1 = -a * *o.two_sided_delta;
        g1 = 0.0;
    }
    const double lo = 1.0 - o.clip_low, hi = 1.0 + o.clip_high;
    const double l2 = -a * std::min(std::max(r, lo), hi);
    const double g2 = (r >= lo && r <= hi) ? dr : 0.0;
    Token t{};
    t.loss = std::max(l1, l2);
    t.grad = l2 > l1 ? g2 : (l1 > l2 ? g1 : 0.5 * (g1 + g2));
    t.s0 = l2 > l1 ? 1.0 : 0.0;
    t.s2 = -lr;
    if (o.dual_clip && a < 0) {
        const double l3 = -a * *o.dual_clip;
        t.s1 = l3 < t.loss ? 1.0 : 0.0;
        t.grad = l3 < t.loss ? 0.0 : (t.loss < l3 ? t.grad : 0.5 * t.grad);
        t.loss = std::min(t.loss, l3);
    }
    return t;
}

// k3 (verl's low_var_kl): δ = ref − logp clamped to ±L, v = e^δ − δ − 1 capped at v_max;
// ∂/∂logp = −(e^δ − 1) where neither clamp is active, else 0. abs: |d|, sign(d).
Token kl_token(double d, const rlpo::penalties::KLOptions& o) {
    Token t{};
    if (o.estimator == rlpo::penalties::KLEstimator::Abs) {
        t.loss = std::abs(d);
        t.grad = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
    } else {
        const double L = o.log_ratio_clamp, delta = -d;
        const double dc = std::min(std::max(delta, -L), L);
        const double v = std::exp(dc) - dc - 1.0;
        t.loss = std::min(v, o.value_clamp);
        t.grad = (delta >= -L && delta <= L && v <= o.value_clamp) ? -(std::exp(dc) - 1.0) : 0.0;
    }
    t.s0 = t.loss;
    return t;
}

// verl's clipped value loss: v_c = clamp(v, [lo, hi] = v_old ± ε), l = ½ max((v − R)²,
// (v_c − R)²); the clip stops the second term's gradient outside [lo, hi].
Token value_token(double v, double lo, double hi, double R) {
    const double vc = std::min(std::max(v, lo), hi);
    const double l1 = 0.5 * (v - R) * (v - R), l2 = 0.5 * (vc - R) * (vc - R);
    const double g1 = v - R, g2 = (v >= lo && v <= hi) ? vc - R : 0.0;
    Token t{};
    t.loss = std::max(l1, l2);
    t.grad = l2 > l1 ? g2 : (l1 > l2 ? g1 : 0.5 * (g1 + g2));
    t.s0 = l2 > l1 ? 1.0 : 0.0;
    t.s1 = v;
    return t;
}

// Token-mean over the mask of the per-token references (inputs rounded to S first, as the
// kernels see them): the value, the gradient m·g/Σm and the stats' means.
template <class S, class F>
void check_token_mean(const rlpo::Result<S>& r, const Mat<double>& mask, F token,
                      const std::string& s0, const std::string& s1, const std::string& s2) {
    const double tol = std::is_same<S, float>::value ? 2e-5 : 1e-12;
    double n = 0, value = 0, st0 = 0, st1 = 0, st2 = 0;
    for (Index k = 0; k < mask.size(); ++k) n += mask.data()[k];
    REQUIRE(n > 0);
    Index checked = 0;
    for (Index k = 0; k < mask.size(); ++k) {
        const double m = mask.data()[k];
        const Token t = token(k);
        value += m * t.loss;
        st0 += m * t.s0;
        st1 += m * t.s1;
        st2 += m * t.s2;
        const double g = m * t.grad / n;
        INFO("token " << k << ": loss " << t.loss << ", gradient " << g);
        CHECK(std::abs(static_cast<double>(r.grad.data()[k]) - g) <= tol * (1.0 + std::abs(g)));
        ++checked;
    }
    CHECK(checked == mask.size());
    CHECK(std::abs(r.value - value / n) <= tol * (1.0 + std::abs(value / n)));
    if (!s0.empty()) CHECK(std::abs(r.metrics[s0] - st0 / n) <= tol * (1.0 + std::abs(st0 / n)));
    if (!s1.empty()) CHECK(std::abs(r.metrics[s1] - st1 / n) <= tol * (1.0 + std::abs(st1 / n)));
    if (!s2.empty()) CHECK(std::abs(r.metrics[s2] - st2 / n) <= tol * (1.0 + std::abs(st2 / n)));
}

template <class S>
double at(const Mat<S>& x, Index k) {
    return static_cast<double>(x.data()[k]);
}

template <class S>
void check_kernels(std::uint64_t seed) {
    const Inputs d = make_inputs(seed);
    const Mat<S> logp = as<S>(d.logp), old = as<S>(d.old), ref = as<S>(d.ref), adv = as<S>(d.adv),
                 mask = as<S>(d.mask), v = as<S>(d.values), vo = as<S>(d.old_values),
                 R = as<S>(d.returns);
    using rlpo::policy::PPOClipOptions;
    PPOClipOptions both = PPOClipOptions::verl();
    both.two_sided_delta = 2.5;
    // the inputs reach every branch under the mask: the clip, the dual clip, δ, the ±20
    // clamp, k3's value clamp and the value clip (else the comparisons below prove less)
    {
        using rlpo::penalties::KLOptions;
        const KLOptions k3 = KLOptions::verl();
        Index clipped = 0, dual = 0, capped = 0, clamped = 0, k3_capped = 0, v_clipped = 0;
        for (Index k = 0; k < d.mask.size(); ++k) {
            if (d.mask.data()[k] == 0) continue;
            const double lr = d.logp.data()[k] - d.old.data()[k];
            // (the dual clip binds without δ: with δ = 2.5 < c = 3 the first term stays below
            // −A·c)
            const Token t = ppo_token(d.adv.data()[k], lr, PPOClipOptions::verl());
            clipped += t.s0 > 0;
            dual += t.s1 > 0;
            capped += d.adv.data()[k] < 0 && std::exp(lr) > *both.two_sided_delta;
            clamped += std::abs(lr) > both.log_ratio_clamp;
            const double delta = d.ref.data()[k] - d.logp.data()[k];
            k3_capped += std::abs(delta) < k3.log_ratio_clamp &&
                         std::exp(delta) - delta - 1 > k3.value_clamp;
            v_clipped += value_token(d.values.data()[k], d.old_values.data()[k] - 0.5,
                                     d.old_values.data()[k] + 0.5, d.returns.data()[k])
                             .s0 > 0;
        }
        CHECK(clipped > 0);
        CHECK(dual > 0);
        CHECK(capped > 0);
        CHECK(clamped > 0);
        CHECK(k3_capped > 0);
        CHECK(v_clipped > 0);
    }
    for (const PPOClipOptions& o : {PPOClipOptions{}, PPOClipOptions::verl(), both}) {
        const auto r = rlpo::policy::ppo_clip(logp, old, adv, mask, o);
        // (the log-ratio as the kernel forms it: the difference of the inputs in S)
        check_token_mean<S>(
            r, d.mask,
            [&](Index k) {
                return ppo_token(at(adv, k), static_cast<double>(logp.data()[k] - old.data()[k]),
                                 o);
            },
            "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl");
    }
    using rlpo::penalties::KLEstimator;
    using rlpo::penalties::KLOptions;
    for (const KLOptions& o :
         {KLOptions::verl(KLEstimator::K3), KLOptions::verl(KLEstimator::Abs)}) {
        const auto r = rlpo::penalties::kl_penalty(logp, ref, mask, o);
        check_token_mean<S>(
            r, d.mask,
            [&](Index k) {
                return kl_token(static_cast<double>(logp.data()[k] - ref.data()[k]), o);
            },
            "kl", "", "");
    }
    const rlpo::critic::ValueLossOptions vopt;
    const auto rv = rlpo::critic::value_loss(v, vo, R, mask, vopt);
    check_token_mean<S>(
        rv, d.mask,
        [&](Index k) {
            // (the clip bounds as the kernel forms them, in S)
            const S eps = static_cast<S>(*vopt.clip);
            return value_token(at(v, k), static_cast<double>(vo.data()[k] - eps),
                               static_cast<double>(vo.data()[k] + eps), at(R, k));
        },
        "vf_clipfrac", "vpred_mean", "");

    // the training step's single pass (PPO clip verl + k3 in the loss + the value loss) equals
    // its parts, bit for bit
    rlpo::train::StepOptions so;
    so.policy.vanilla = PPOClipOptions::verl();
    so.kl = KLOptions::verl();
    so.value_coef = 0.5;
    rlpo::train::StepOptions parts = so;
    parts.fused = false;
    Mat<S> g1 = Mat<S>::Zero(kB, kT), g2 = g1, gv1 = g1, gv2 = g1;
    rlpo::train::StepInputs<S> in;
    in.logp = logp;
    in.mask = mask;
    in.advantages = adv;
    in.old_logp = old;
    in.ref_logp = ref;
    in.values = v;
    in.old_values = vo;
    in.returns = R;
    const auto a = rlpo::train::TrainingStep<S>(so)(
        in, {rlpo::write_to(g1), rlpo::no_grad<S>(), rlpo::write_to(gv1)});
    const auto b = rlpo::train::TrainingStep<S>(parts)(
        in, {rlpo::write_to(g2), rlpo::no_grad<S>(), rlpo::write_to(gv2)});
    CHECK(a.loss == b.loss);
    for (Index k = 0; k < g1.size(); ++k) {
        INFO("token " << k);
        CHECK(g1.data()[k] == g2.data()[k]);
        CHECK(gv1.data()[k] == gv2.data()[k]);
    }
}

}  // namespace

TEST_CASE("token kernels: every branch against the scalar formulas, float and double",
          "[train][simd]") {
    for (std::uint64_t seed : {3, 4}) {
        check_kernels<float>(seed);
        check_kernels<double>(seed);
    }
}
