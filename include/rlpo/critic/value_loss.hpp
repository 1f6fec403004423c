#pragma once
/// \file
/// Critic losses: PPO's clipped value loss and SAFE's double soft-min critic with Huber terms.
///
/// **Clipped value loss** (`value_loss`). Per unmasked token, with v the current value
/// prediction, v_old the value at rollout time, R the return and c the value clip range:
///
///     v_c = clamp(v, v_old − c, v_old + c)
///     l   = max((v − R)², (v_c − R)²)               (no clip: l = (v − R)²)
///     loss = ½ · agg(l)
///
/// Gradient w.r.t. `values`: ½·∂l/∂v = (v − R) on the unclipped branch, (v_c − R)·[v inside
/// the clip range] on the clipped one (ties split as torch.max does). Metrics: `vf_clipfrac`
/// (fraction where the clipped branch is strictly larger), `vpred_mean` (mean of v).
/// Defaults: c = 0.5 (verl `critic.cliprange_value`); `ValueLossOptions::trl()` c = 0.2 (TRL PPO
/// `cliprange_value`); `::openrlhf()` no clipping (OpenRLHF `value_clip` unset). The ½ is
/// verl's; multiply by the trainer's value coefficient through the GradientOut coefficient.
///
/// **SAFE double soft-min critic** (`safe_critic_loss`). Two value heads v¹, v² are combined by
/// a pessimistic soft minimum, V = −α·(log(e^{−v¹/α} + e^{−v²/α}) − log 2) (→ min as α → 0, the
/// mean as α → ∞), and with V_old the soft-min value at rollout time:
///
///     V_c  = V_old + clamp(V − V_old, −c, c)
///     loss = agg(½·(Huber_δ(V − R) + Huber_δ(V_c − R)))
///
/// Huber_δ(x) = ½x² for |x| ≤ δ, δ(|x| − ½δ) beyond (torch's `huber_loss`). Note that SAFE adds
/// the clipped and unclipped terms (it does not take their max as PPO does). Gradients are
/// w.r.t. both heads: ∂V/∂v¹ = σ((v² − v¹)/α), ∂V/∂v² = 1 − ∂V/∂v¹. Metrics: `vf_clipfrac`
/// (fraction with |V − V_old| > c), `vpred_mean` (mean of V). Defaults from the SAFE code
/// (Maity 2026, "SAFE: Stable Alignment Finetuning with Entropy-Aware Predictive Control for
/// RLHF", arXiv 2602.04651): α = 0.3, δ = 0.5, c = 0.2; the reference critic is per sequence
/// (pass `[B, 1]` inputs and a mask of ones; token-mean then is its batch mean).
///
/// **Bad input**: shape mismatches, c ≤ 0, α ≤ 0, δ ≤ 0 → rlpo::invalid_argument; NaN under a
/// non-zero mask → rlpo::invalid_argument naming the input; a per-token loss or gradient that is
/// not finite (infinite values or returns, or finite ones whose (V − R)² overflows: in the
/// storage type for `value_loss`, which computes in it) → rlpo::invalid_argument listing the
/// inputs at that position; a value or metric whose sum
/// overflows, or a weighted gradient entry beyond the storage type → rlpo::numerical_error.
/// An empty mask gives value 0, gradient 0. Allocates: nothing besides the result.

#include <rlpo/core/math.hpp>
#include <rlpo/policy/detail/common.hpp>

#include <algorithm>
#include <cmath>

namespace rlpo::critic {

struct ValueLossOptions {
    /// c: value clip range around the rollout-time value; unset = no clipping.
    std::optional<double> clip = 0.5;

    static ValueLossOptions verl() { return ValueLossOptions{}; }
    static ValueLossOptions trl() {
        ValueLossOptions o;
        o.clip = 0.2;
        return o;
    }
    static ValueLossOptions openrlhf() {
        ValueLossOptions o;
        o.clip = std::nullopt;
        return o;
    }
};

namespace detail {
/// The clipped value loss for one SIMD packet, in the storage precision S (run by
/// `token_pass_simd`; the training step's fused pass calls `eval` directly). Stats: 0 the
/// clipped branch strictly larger, 1 the value v.
template <class S>
struct ValueLossKernel {
    using P = ::rlpo::detail::simd::Packet<S>;
    static constexpr const char* name = "critic::value_loss";
    static constexpr std::size_t stats = 2;

    explicit ValueLossKernel(const ValueLossOptions& o) : clip(o.clip.has_value()) {
        namespace simd = ::rlpo::detail::simd;
        vc = simd::set1<S>(static_cast<S>(clip ? *o.clip : 0.0));
        zero = simd::set1<S>(S(0));
        half = simd::set1<S>(S(0.5));
    }

    /// v, v_old, R of one packet (masked lanes zero): the per-token loss ½·max((v − R)²,
    /// (v_c − R)²), its gradient w.r.t. v (ties split as torch.max), and the stats. A NaN
    /// input surfaces as a NaN loss (v_old only with the clip, as the scalar definition).
    EIGEN_ALWAYS_INLINE void eval(const P& x, const P& xo, const P& r, P& loss, P& grad,
                                  ::rlpo::detail::simd::Packets<S, 2>& st) const {
        using namespace ::rlpo::detail::simd;
        const P d1 = psub(x, r);
        const P l1 = pmul(half, pmul(d1, d1));
        st[1] = x;
        if (!clip) {
            st[0] = zero;
            loss =
                mask_select<S>(mask_and<S>(mask_not_nan<S>(x), mask_not_nan<S>(r)), l1, padd(x, r));
            grad = d1;
            return;
        }
        const P lo = psub(xo, vc), hi = padd(xo, vc);
        const P xc = pmin(pmax(x, lo), hi);
        const P d2 = psub(xc, r);
        const P l2 = pmul(half, pmul(d2, d2));
        const P g2 = mask_select<S>(mask_and<S>(mask_le<S>(lo, x), mask_le<S>(x, hi)), d2, zero);
        const auto gt = mask_lt<S>(l1, l2), lt = mask_lt<S>(l2, l1);
        st[0] = mask_indicator<S>(gt);
        const P l = mask_select<S>(gt, l2, l1);
        grad = mask_select<S>(gt, g2, mask_select<S>(lt, d1, pmul(half, padd(d1, g2))));
        loss = mask_select<S>(
            mask_and<S>(mask_and<S>(mask_not_nan<S>(x), mask_not_nan<S>(r)), mask_not_nan<S>(xo)),
            l, padd(padd(x, r), xo));
    }

    void report(Metrics& m, const std::array<double, 2>& st, double n) const {
        m.add("vf_clipfrac", st[0], n);
        m.add("vpred_mean", st[1], n);
    }

    bool clip;
    P vc, zero, half;
};

/// The clipped value loss over views (what `value_loss` runs: a template on the scalar only,
/// so that the callers' input expression types share one copy of the pass).
template <class S>
Result<S> value_loss_pass(const ConstMatRef<S>& v, const ConstMatRef<S>& vo,
                          const ConstMatRef<S>& R, const ConstMatRef<S>& m,
                          const ValueLossOptions& opts, const Normalizer& norm,
                          const GradientOut<S>& out) {
    using P = ::rlpo::detail::simd::Packet<S>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "critic::value_loss";
    ::rlpo::detail::check_same_shape(fn, "old_values", vo, "values", v);
    ::rlpo::detail::check_same_shape(fn, "returns", R, "values", v);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "values", v);
    if (opts.clip) ::rlpo::detail::check_positive(fn, "clip", *opts.clip);
    Result<S> res;
    const RowWeights w = ::rlpo::detail::row_weights_fast(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, v.rows(), v.cols());
    const ValueLossKernel<S> kern(opts);
    const auto pass = ::rlpo::detail::token_pass_simd<2, S>(
        fn, m, w, g, {{"values", &v}, {"old_values", &vo}, {"returns", &R}},
        [&](Index i, Index k, Index T, const ::rlpo::detail::simd::LaneMask<S>& keep, P& loss,
            P& grad, ::rlpo::detail::simd::Packets<S, 2>& st) {
            using ::rlpo::detail::simd::load_kept;
            const P x = load_kept(v.data() + i * v.outerStride(), k, T, keep);
            const P r = load_kept(R.data() + i * R.outerStride(), k, T, keep);
            const P xo =
                kern.clip ? load_kept(vo.data() + i * vo.outerStride(), k, T, keep) : kern.zero;
            kern.eval(x, xo, r, loss, grad, st);
        });
    res.value = g.coef() * pass.value;
    kern.report(res.metrics, pass.stats, pass.count);
    res.metrics.with_count_epsilon(norm.count_epsilon);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}
}  // namespace detail

/// Clipped value loss and its gradient w.r.t. `values`. All inputs `[B, T]`. Computed per SIMD
/// packet in the storage precision (float inputs in float), sums in double.
template <class DV, class DO, class DR, class DM>
Result<::rlpo::detail::scalar_t<DV>> value_loss(
    const Eigen::MatrixBase<DV>& values, const Eigen::MatrixBase<DO>& old_values,
    const Eigen::MatrixBase<DR>& returns, const Eigen::MatrixBase<DM>& mask,
    const ValueLossOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DV>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DV>;
    return detail::value_loss_pass<S>(values.derived(), old_values.derived(), returns.derived(),
                                      mask.derived(), opts, norm, out);
}

struct SAFECriticOptions {
    double alpha = 0.3;        ///< α: soft-min temperature
    double huber_delta = 0.5;  ///< δ of the Huber terms
    double clip = 0.2;         ///< c: clip of V − V_old
};

/// Value and the gradients w.r.t. both value heads.
template <class S>
struct SAFECriticResult {
    double value = 0.0;
    Mat<S> grad_v1, grad_v2;
    Metrics metrics;
};

namespace detail {
/// Soft minimum of two values and ∂/∂a (∂/∂b = 1 − that).
inline std::pair<double, double> soft_min2(double a, double b, double alpha) {
    const double lo = std::min(a, b);
    // −α·(log(e^{−a/α} + e^{−b/α}) − log 2), shifted by the min for stability
    const double v =
        lo - alpha * (std::log(std::exp(-(a - lo) / alpha) + std::exp(-(b - lo) / alpha)) -
                      std::log(2.0));
    return {v, ::rlpo::sigmoid((b - a) / alpha)};
}
inline std::pair<double, double> huber(double x, double d) {
    const double ax = std::abs(x);
    if (ax <= d) return {0.5 * x * x, x};
    return {d * (ax - 0.5 * d), x > 0 ? d : -d};
}
}  // namespace detail

/// V = soft-min(v1, v2); the soft-min value at rollout time `old_values`; returns R.
/// All inputs `[B, T]`; gradients w.r.t. `v1` and `v2`.
template <class D1, class D2, class DO, class DR, class DM>
SAFECriticResult<::rlpo::detail::scalar_t<D1>> safe_critic_loss(
    const Eigen::MatrixBase<D1>& v1, const Eigen::MatrixBase<D2>& v2,
    const Eigen::MatrixBase<DO>& old_values, const Eigen::MatrixBase<DR>& returns,
    const Eigen::MatrixBase<DM>& mask, const SAFECriticOptions& opts = {},
    const Normalizer& norm = {}) {
    using S = ::rlpo::detail::scalar_t<D1>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "critic::safe_critic_loss";
    const ConstMatRef<S> a(v1.derived()), b(v2.derived()), vo(old_values.derived()),
        R(returns.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "v2", b, "v1", a);
    ::rlpo::detail::check_same_shape(fn, "old_values", vo, "v1", a);
    ::rlpo::detail::check_same_shape(fn, "returns", R, "v1", a);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "v1", a);
    ::rlpo::detail::check_positive(fn, "alpha", opts.alpha);
    ::rlpo::detail::check_positive(fn, "huber_delta", opts.huber_delta);
    ::rlpo::detail::check_positive(fn, "clip", opts.clip);
    const RowWeights w = row_weights(fn, m, norm);
    SAFECriticResult<S> res;
    res.grad_v1 = Mat<S>::Zero(a.rows(), a.cols());
    res.grad_v2 = Mat<S>::Zero(a.rows(), a.cols());
    double value = 0, clipped = 0, vsum = 0;
    const double c = opts.clip, d = opts.huber_delta;
    for (Index i = 0; i < a.rows(); ++i) {
        const double ci = w.c[static_cast<std::size_t>(i)];
        ::rlpo::policy::detail::check_row_nan<S>(
            fn, m, i, {{"v1", &a}, {"v2", &b}, {"old_values", &vo}, {"returns", &R}});
        for (Index t = 0; t < a.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const auto sm = detail::soft_min2(static_cast<double>(a(i, t)),
                                              static_cast<double>(b(i, t)), opts.alpha);
            const double V = sm.first, xo = static_cast<double>(vo(i, t)),
                         r = static_cast<double>(R(i, t));
            const double diff = V - xo;
            const double Vc = xo + std::clamp(diff, -c, c);
            const bool inside = diff >= -c && diff <= c;
            const auto h1 = detail::huber(V - r, d), h2 = detail::huber(Vc - r, d);
            const double l = 0.5 * (h1.first + h2.first);
            const double dV = 0.5 * (h1.second + (inside ? h2.second : 0.0));
            if (!(std::isfinite(l) && std::isfinite(dV) && std::isfinite(sm.second)))
                ::rlpo::detail::fail_nan_at<S>(
                    fn, i, t, {{"v1", &a}, {"v2", &b}, {"old_values", &vo}, {"returns", &R}});
            value += ci * mk * l;
            const S g1 = static_cast<S>(ci * mk * dV * sm.second),
                    g2 = static_cast<S>(ci * mk * dV * (1.0 - sm.second));
            if (!(std::abs(g1) < std::numeric_limits<S>::infinity() &&
                  std::abs(g2) < std::numeric_limits<S>::infinity()))
                ::rlpo::detail::fail_grad_overflow(fn, i, t);
            res.grad_v1(i, t) = g1;
            res.grad_v2(i, t) = g2;
            clipped += inside ? 0.0 : mk;
            vsum += mk * V;
        }
    }
    res.value = value;
    res.metrics.add("vf_clipfrac", clipped, w.local_tokens);
    res.metrics.add("vpred_mean", vsum, w.local_tokens);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::critic
