#pragma once
/// \file
/// Token-level estimators of KL(π‖π_ref) from samples of π (Schulman, "Approximating KL
/// divergence", 2020), used as a penalty in the loss or in the reward.
///
/// With d = logp − ref_logp (so the sampled log-ratio log π/π_ref) and δ = −d:
///
/// | estimator     | verl / TRL name   | value                        | ∂/∂logp                        |
/// |---------------|-------------------|------------------------------|--------------------------------|
/// | `K1`          | `kl`, `k1`        | d                            | 1                              |
/// | `Abs`         | `abs`             | abs(d)                       | sign(d) (0 at d = 0)           |
/// | `K2`          | `mse`, `k2`       | ½ d²                         | d                              |
/// | `K3`          | `low_var_kl`, `k3`| e^δc − δc − 1, clamped to ≤ v_max | −(e^δc − 1) where unclamped, else 0 |
/// | `K1Plus`, `AbsPlus`, `K3Plus` | `k1+`/`kl+`, `abs+`, `k3+`/`low_var_kl+` | value of X | d (the gradient of k2) |
///
/// **Straight-through "X+"** (verl `kl_penalty` names ending in `+`): the value of X (with its
/// clamps) and the gradient of k2 (unclamped), i.e. k2 − sg(k2) + sg(X). `k2+` / `mse+` are k2.
///
/// **Importance-corrected** (`kl_penalty_corrected`, TRL `use_bias_correction_kl`, from the
/// DeepSeek-V3.2 report): with w = exp(logp − old_logp) (not detached, as TRL's `coef_1`), the
/// per-token value is w·X and its gradient w·(∂X/∂logp + X). The log-ratio goes through the same
/// clamp L as k3 (stopping the gradient outside ±L); TRL does not clamp (`KLOptions::trl()`).
/// With samples from π_old its expected gradient is exactly ∇E_π[X]: ∇KL(π‖π_ref) for k1 and k3.
///
/// **KL in the reward** (`kl_in_reward`): the rollout-time placement (verl `apply_kl_penalty`,
/// OpenRLHF): per-token k from `old_logp` (the policy that sampled) against `ref_logp`, and
/// rewards = scores − β·k per unmasked token (0 at masked tokens), plus the per-sequence sums
/// Σ_t m·k that a GRPO-style trainer folds into the sequence score. No gradient: the reward is
/// a constant for the policy-gradient step. Metrics as verl: `reward_kl_penalty` (mean over
/// non-empty sequences of the token-mean k), `reward_kl_penalty_coeff` (β).
///
/// where δc = clamp(δ, −L, L). verl clamps k3 (L = 20, v_max = 10; the clamps stop the gradient,
/// as `torch.clamp` does, inclusive at the bounds); TRL's k3 is unclamped (`KLOptions::trl()`).
/// What each estimator's gradient *follows* when used as a loss is proven by exact enumeration in
/// tests/penalties/kl_estimators.cpp (the README carries the table): on-policy k1 → 0,
/// k2 and every X+ → ∇KL(π‖π_ref), k3 → ∇KL(π_ref‖π), abs → ∇Σ|π − π_ref| (twice the total
/// variation); importance-corrected X under π_old → ∇E_π[X] (k1, k3: ∇KL(π‖π_ref)).
///
/// The loss is the aggregation (core/aggregation.hpp) of the per-token value; the gradient is
/// w.r.t. `logp`. Metric: `kl` = mean per-token estimate over unmasked tokens.
///
/// **Per-token values** (what trainers log, e.g. verl's per-token `kld` before `agg_loss`):
/// `kl_penalty` and `kl_penalty_corrected` take an optional last argument `token_values`, a
/// caller-owned `[B, T]` destination of the same type as the gradient's: `rlpo::write_to(buf)`
/// overwrites it with the per-token estimate (w·X for the corrected form; 0 at masked tokens),
/// `rlpo::add_to(buf, c)` adds c × the estimate at unmasked tokens; the default writes nothing.
/// The values come from the same pass as the loss (no second read of the inputs).
///
/// **Bad input**: shape mismatch (`token_values` included, or a `token_values` that is neither
/// `write_to`, `add_to` nor none), L ≤ 0, v_max ≤ 0, β < 0 → rlpo::invalid_argument; NaN under a non-zero
/// mask → rlpo::invalid_argument naming the input. −inf log-probs: k3 with its clamps is finite
/// (value v_max, gradient 0) and accepted; wherever a per-token value or gradient is not finite
/// — k1, abs, k2 (value ±inf), every X+ (the k2 gradient d = −inf has no finite limit: k3+ gives
/// value v_max but gradient −inf, so it is rejected rather than reported inconsistently),
/// unclamped k3 (e^∞ − ∞), both log-probs −inf (d undefined), or finite inputs whose d, ½d² or
/// e^δ overflow — the call throws rlpo::invalid_argument listing the inputs at that position.
/// The value and the `kl` metric are checked finite (a sum of finite estimates can overflow:
/// rlpo::numerical_error). `kl_in_reward` applies the same rule to k and to the reward
/// score − β·k (an overflowing sequence sum or metric → rlpo::numerical_error).
/// Allocates: nothing besides the result (`kl_in_reward`: its three outputs).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/token_pass.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace rlpo::penalties {

/// The estimator. The `*Plus` values are the straight-through variants (value of X, gradient of
/// k2); there is no K2Plus (verl maps `k2+` to k2).
enum class KLEstimator { K1, Abs, K2, K3, K1Plus, AbsPlus, K3Plus };

/// The estimator whose value a (possibly straight-through) estimator reports.
inline constexpr KLEstimator base_estimator(KLEstimator e) {
    return e == KLEstimator::K1Plus    ? KLEstimator::K1
           : e == KLEstimator::AbsPlus ? KLEstimator::Abs
           : e == KLEstimator::K3Plus  ? KLEstimator::K3
                                       : e;
}
/// True for the straight-through ("X+") estimators.
inline constexpr bool is_straight_through(KLEstimator e) { return base_estimator(e) != e; }

struct KLOptions {
    KLEstimator estimator = KLEstimator::K3;
    /// L: clamp of δ before exp (k3 only); +inf disables.
    double log_ratio_clamp = 20.0;
    /// v_max: clamp of the k3 value (k3 only); +inf disables.
    double value_clamp = 10.0;

    /// verl `kl_penalty`: k3 clamped (±20, ≤10).
    static KLOptions verl(KLEstimator e = KLEstimator::K3) {
        KLOptions o;
        o.estimator = e;
        return o;
    }
    /// TRL GRPOTrainer: k3 unclamped.
    static KLOptions trl(KLEstimator e = KLEstimator::K3) {
        KLOptions o;
        o.estimator = e;
        o.log_ratio_clamp = std::numeric_limits<double>::infinity();
        o.value_clamp = std::numeric_limits<double>::infinity();
        return o;
    }
};

/// Estimator value and ∂/∂logp for one token, d = logp − ref_logp (scalar reference form; the
/// objectives use the vectorised `detail::kl_packet`, which computes the same formulas).
inline ::rlpo::detail::LossGrad kl_estimate(double d, const KLOptions& o) {
    ::rlpo::detail::LossGrad lg{0.0, 0.0};
    switch (base_estimator(o.estimator)) {
        case KLEstimator::K1: lg = {d, 1.0}; break;
        case KLEstimator::Abs: lg = {std::abs(d), d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0)}; break;
        case KLEstimator::K2: lg = {0.5 * d * d, d}; break;
        case KLEstimator::K3: {
            const double L = o.log_ratio_clamp;
            const double delta = -d;
            const double dc = std::clamp(delta, -L, L);
            const double e = std::exp(dc);
            const double v = e - dc - 1.0;
            const bool in_delta = delta >= -L && delta <= L;
            const bool in_value = v <= o.value_clamp;  // v ≥ 0 > −v_max always
            const double value = std::min(v, o.value_clamp);
            const double grad = (in_delta && in_value) ? -(e - 1.0) : 0.0;  // ∂v/∂δ · ∂δ/∂logp
            lg = {value, grad};
            break;
        }
        default: break;
    }
    if (is_straight_through(o.estimator)) lg.grad = d;
    return lg;
}

namespace detail {
inline void validate(const char* fn, const KLOptions& o) {
    RLPO_CHECK(o.log_ratio_clamp > 0 && !std::isnan(o.log_ratio_clamp), fn,
               "log_ratio_clamp: must be > 0, given ", o.log_ratio_clamp);
    RLPO_CHECK(o.value_clamp > 0 && !std::isnan(o.value_clamp), fn,
               "value_clamp: must be > 0, given ", o.value_clamp);
}

/// Broadcast constants of the vectorised estimator.
template <class S>
struct KLPacketConsts {
    using P = ::rlpo::detail::simd::Packet<S>;
    KLEstimator base;
    bool straight_through;
    P zero, one, half, vL, vnL, vmax;
    explicit KLPacketConsts(const KLOptions& o)
        : base(base_estimator(o.estimator)),
          straight_through(is_straight_through(o.estimator)),
          zero(::rlpo::detail::simd::set1<S>(S(0))),
          one(::rlpo::detail::simd::set1<S>(S(1))),
          half(::rlpo::detail::simd::set1<S>(S(0.5))),
          vL(::rlpo::detail::simd::set1<S>(static_cast<S>(o.log_ratio_clamp))),
          vnL(::rlpo::detail::simd::set1<S>(static_cast<S>(-o.log_ratio_clamp))),
          vmax(::rlpo::detail::simd::set1<S>(static_cast<S>(o.value_clamp))) {}
};

/// Vectorised estimator for one packet: d = logp − ref_logp → value v and ∂v/∂logp (the
/// formulas of `kl_estimate`). A NaN d gives a NaN value (the clamps would hide it otherwise).
template <class S>
EIGEN_ALWAYS_INLINE void kl_packet(const ::rlpo::detail::simd::Packet<S>& d,
                                   const KLPacketConsts<S>& c, ::rlpo::detail::simd::Packet<S>& v,
                                   ::rlpo::detail::simd::Packet<S>& g) {
    using namespace ::rlpo::detail::simd;
    using P = Packet<S>;
    switch (c.base) {
        case KLEstimator::Abs:
            v = pmax(d, pnegate(d));
            g = mask_select<S>(mask_lt<S>(c.zero, d), c.one,
                               mask_select<S>(mask_lt<S>(d, c.zero), pnegate(c.one), c.zero));
            break;
        case KLEstimator::K2:
            v = pmul(c.half, pmul(d, d));
            g = d;
            break;
        case KLEstimator::K3: {
            const P delta = pnegate(d);
            const P dc = pmin(pmax(delta, c.vnL), c.vL);
            const P e = pexp(dc);
            const P raw = psub(psub(e, dc), c.one);
            v = pmin(raw, c.vmax);
            const auto live =
                mask_and<S>(mask_and<S>(mask_le<S>(c.vnL, delta), mask_le<S>(delta, c.vL)),
                            mask_le<S>(raw, c.vmax));
            g = mask_select<S>(live, psub(c.one, e), c.zero);
            break;
        }
        default:  // K1: value d, gradient 1
            v = d;
            g = c.one;
            break;
    }
    if (c.straight_through) g = d;
    v = mask_select<S>(mask_not_nan<S>(d), v, d);
}
}  // namespace detail

/// Name of an estimator as verl spells it (k1 → "kl", k2 → "mse", k3 → "low_var_kl").
inline const char* to_string(KLEstimator e) {
    switch (e) {
        case KLEstimator::K1: return "k1";
        case KLEstimator::Abs: return "abs";
        case KLEstimator::K2: return "k2";
        case KLEstimator::K3: return "k3";
        case KLEstimator::K1Plus: return "k1+";
        case KLEstimator::AbsPlus: return "abs+";
        case KLEstimator::K3Plus: return "k3+";
    }
    return "?";
}

namespace detail {
/// Every accepted spelling, verl's first (the list an unknown name's error shows). The rlpo
/// names `to_string` returns (`k1`, `k2`, `k3`, `k1+`, …) are not the first rows of their values,
/// so `to_string` keeps its own switch.
inline constexpr NameRow<KLEstimator> kl_estimator_names[] = {{"kl", KLEstimator::K1},
                                                              {"k1", KLEstimator::K1},
                                                              {"abs", KLEstimator::Abs},
                                                              {"mse", KLEstimator::K2},
                                                              {"k2", KLEstimator::K2},
                                                              {"low_var_kl", KLEstimator::K3},
                                                              {"k3", KLEstimator::K3},
                                                              {"kl+", KLEstimator::K1Plus},
                                                              {"k1+", KLEstimator::K1Plus},
                                                              {"abs+", KLEstimator::AbsPlus},
                                                              {"mse+", KLEstimator::K2},
                                                              {"k2+", KLEstimator::K2},
                                                              {"low_var_kl+", KLEstimator::K3Plus},
                                                              {"k3+", KLEstimator::K3Plus}};
inline constexpr NameTable kl_estimator_table{kl_estimator_names};
}  // namespace detail

/// Parse verl/TRL spellings: `kl`, `k1`, `abs`, `mse`, `k2`, `low_var_kl`, `k3`, and each with a
/// `+` suffix (straight-through; `mse+` / `k2+` are k2, as in verl). Unknown names throw with
/// the list of valid names.
inline KLEstimator parse_kl_estimator(const std::string& name) {
    return detail::kl_estimator_table.parse("penalties::parse_kl_estimator", "KL estimator", name);
}

namespace detail {
/// The token pass of `kl_penalty` (`Corrected` false: `olp` is not read) and of
/// `kl_penalty_corrected`: shape checks against `logp`, option check, the vectorised pass.
template <class S, bool Corrected>
Result<S> kl_pass(const char* fn, const ConstMatRef<S>& lp, const ConstMatRef<S>& olp,
                  const ConstMatRef<S>& rlp, const ConstMatRef<S>& m, const KLOptions& opts,
                  const Normalizer& norm, const GradientOut<S>& out,
                  const GradientOut<S>& token_values) {
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    if constexpr (Corrected) ::rlpo::detail::check_same_shape(fn, "old_logp", olp, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "ref_logp", rlp, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
    validate(fn, opts);
    RLPO_CHECK(token_values.mode != GradMode::Own, fn,
               "token_values: pass rlpo::write_to(buffer), rlpo::add_to(buffer) or nothing");
    Result<S> res;
    const RowWeights w = ::rlpo::detail::row_weights_fast(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, lp.rows(), lp.cols());
    Result<S> unused;
    const ::rlpo::detail::GradWriter<S> tv(fn, unused, token_values, lp.rows(), lp.cols());
    const bool add_values = tv.mode() == GradMode::Add;
    if (tv.active() && !add_values)  // masked packets are skipped by the pass: 0 there first
        for (Index i = 0; i < lp.rows(); ++i) std::fill(tv.row(i), tv.row(i) + lp.cols(), S(0));
    using P = ::rlpo::detail::simd::Packet<S>;
    const KLPacketConsts<S> kc(opts);
    const P vcoef = ::rlpo::detail::simd::set1<S>(static_cast<S>(tv.coef()));
    const P vinf = ::rlpo::detail::simd::set1<S>(std::numeric_limits<S>::infinity());
    // rows whose stored values overflow (coefficient × estimate, or the sum with the buffer);
    // each row is one thread's, so the flags need no synchronisation
    std::vector<char> values_bad(tv.active() ? static_cast<std::size_t>(lp.rows()) : 0, 0);
    using Keep = ::rlpo::detail::simd::LaneMask<S>;
    const auto store_values = [&](Index i, Index k, Index T, const Keep& keep, const P& loss) {
        using namespace ::rlpo::detail::simd;
        S* row = tv.row(i);
        P v = mask_zero_unless<S>(keep, pmul(loss, vcoef));
        if (add_values) v = padd(load(static_cast<const S*>(row), k, T), v);
        // |v| < inf is false for ±inf and NaN; only the unmasked lanes count
        if (mask_any<S>(mask_andnot<S>(keep, mask_lt<S>(Eigen::internal::pabs(v), vinf))))
            values_bad[static_cast<std::size_t>(i)] = 1;
        store_n(row, k, T, v);
    };
    const auto body = [&](Index i, Index k, Index T, const Keep& keep, P& loss, P& grad,
                          ::rlpo::detail::simd::Packets<S, 1>& st) {
        using namespace ::rlpo::detail::simd;
        const P x = load_kept(lp.data() + i * lp.outerStride(), k, T, keep);
        const P d = psub(x, load_kept(rlp.data() + i * rlp.outerStride(), k, T, keep));
        if constexpr (Corrected) {
            P v, gv;
            kl_packet<S>(d, kc, v, gv);
            const P raw = psub(x, load_kept(olp.data() + i * olp.outerStride(), k, T, keep));
            const P wt = pexp(pmin(pmax(raw, kc.vnL), kc.vL));
            const P dw = mask_select<S>(
                mask_and<S>(mask_le<S>(kc.vnL, raw), mask_le<S>(raw, kc.vL)), wt, kc.zero);
            loss = mask_select<S>(mask_not_nan<S>(raw), pmul(wt, v), raw);
            grad = padd(pmul(wt, gv), pmul(v, dw));
        } else {
            kl_packet<S>(d, kc, loss, grad);
        }
        st[0] = loss;
        if (tv.active()) store_values(i, k, T, keep, loss);
    };
    ::rlpo::detail::TokenPassResult<1> pass;
    if constexpr (Corrected)
        pass = ::rlpo::detail::token_pass_simd<1, S>(
            fn, m, w, g, {{"logp", &lp}, {"old_logp", &olp}, {"ref_logp", &rlp}}, body);
    else
        pass = ::rlpo::detail::token_pass_simd<1, S>(fn, m, w, g,
                                                     {{"logp", &lp}, {"ref_logp", &rlp}}, body);
    for (std::size_t i = 0; i < values_bad.size(); ++i)
        if (values_bad[i])
            ::rlpo::detail::fail_numerical(fn, "token_values: row ", i,
                                           ": coefficient x per-token estimate (added to the "
                                           "buffer) overflows the storage type");
    res.value = g.coef() * pass.value;
    res.metrics.add("kl", pass.stats[0], pass.count);
    res.metrics.with_count_epsilon(norm.count_epsilon);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}
}  // namespace detail

/// Token-level KL penalty (KL in the loss): aggregation of the estimator over the mask, with its
/// gradient w.r.t. `logp`. All inputs `[B, T]`; `token_values` optionally receives the per-token
/// estimates (see the file comment).
template <class DL, class DR, class DM>
Result<::rlpo::detail::scalar_t<DL>> kl_penalty(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DR>& ref_logp,
    const Eigen::MatrixBase<DM>& mask, const KLOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& token_values =
        no_grad<::rlpo::detail::scalar_t<DL>>()) {
    using S = ::rlpo::detail::scalar_t<DL>;
    const ConstMatRef<S> lp(logp.derived());
    return detail::kl_pass<S, false>("penalties::kl_penalty", lp, lp, ref_logp.derived(),
                                     mask.derived(), opts, norm, out, token_values);
}

/// Importance-corrected token KL penalty (TRL `use_bias_correction_kl`): per token
/// w·X(logp − ref_logp) with w = exp(clamp(logp − old_logp, ±L)), gradient w.r.t. `logp`
/// w·(∂X/∂logp + X·[−L ≤ logp − old_logp ≤ L]). All inputs `[B, T]`. Metric `kl`: mean of w·X
/// (what TRL logs with the correction on).
template <class DL, class DO, class DR, class DM>
Result<::rlpo::detail::scalar_t<DL>> kl_penalty_corrected(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DR>& ref_logp, const Eigen::MatrixBase<DM>& mask,
    const KLOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& token_values =
        no_grad<::rlpo::detail::scalar_t<DL>>()) {
    using S = ::rlpo::detail::scalar_t<DL>;
    return detail::kl_pass<S, true>("penalties::kl_penalty_corrected", logp.derived(),
                                    old_logp.derived(), ref_logp.derived(), mask.derived(), opts,
                                    norm, out, token_values);
}

/// Result of `kl_in_reward`.
template <class S>
struct KLReward {
    Mat<S> rewards;      ///< scores − β·k at unmasked tokens, 0 at masked ones  `[B, T]`
    Mat<S> kl;           ///< the per-token estimate k (0 at masked tokens)       `[B, T]`
    Vec<double> seq_kl;  ///< Σ_t m·k per sequence (fold β·seq_kl into a sequence score)
    Metrics metrics;     ///< `reward_kl_penalty`, `reward_kl_penalty_coeff`
};

/// KL in the reward: k from `old_logp` (the sampling policy) vs `ref_logp` with the estimator of
/// `opts` (its value; straight-through variants give the value of their base), subtracted as
/// β·k from the per-token `scores`. All inputs `[B, T]`; β ≥ 0.
template <class DS, class DO, class DR, class DM>
KLReward<::rlpo::detail::scalar_t<DS>> kl_in_reward(const Eigen::MatrixBase<DS>& scores,
                                                    const Eigen::MatrixBase<DO>& old_logp,
                                                    const Eigen::MatrixBase<DR>& ref_logp,
                                                    const Eigen::MatrixBase<DM>& mask, double beta,
                                                    const KLOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "penalties::kl_in_reward";
    const ConstMatRef<S> sc(scores.derived()), olp(old_logp.derived()), rlp(ref_logp.derived()),
        m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "old_logp", olp, "scores", sc);
    ::rlpo::detail::check_same_shape(fn, "ref_logp", rlp, "scores", sc);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "scores", sc);
    ::rlpo::detail::check_nonnegative(fn, "beta", beta);
    detail::validate(fn, opts);
    ::rlpo::detail::check_mask(fn, m);
    const Index B = sc.rows(), T = sc.cols();
    KLReward<S> res;
    res.rewards.setZero(B, T);
    res.kl.setZero(B, T);
    res.seq_kl.setZero(B);
    double mean_sum = 0.0, rows = 0.0;
    Index overflow_row = -1;  // reported after every row's input errors (they outrank it)
    for (Index i = 0; i < B; ++i) {
        double s = 0.0, len = 0.0;
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double d = static_cast<double>(olp(i, t)) - static_cast<double>(rlp(i, t));
            const double score = static_cast<double>(sc(i, t));
            const double k = kl_estimate(d, opts).loss;
            const S rw = static_cast<S>(score - beta * k), ks = static_cast<S>(k);
            // NaN or ±inf (k from −inf log-probs, or an overflow in S): named, never stored
            if (!(std::abs(rw) < std::numeric_limits<S>::infinity() &&
                  std::abs(ks) < std::numeric_limits<S>::infinity()))
                ::rlpo::detail::fail_nan_at<S>(
                    fn, i, t, {{"scores", &sc}, {"old_logp", &olp}, {"ref_logp", &rlp}});
            res.kl(i, t) = ks;
            res.rewards(i, t) = rw;
            s += mk * k;
            len += mk;
        }
        if (!std::isfinite(s) && overflow_row < 0) overflow_row = i;
        res.seq_kl(i) = s;
        if (len > 0) {
            mean_sum += s / len;
            rows += 1.0;
        }
    }
    if (overflow_row >= 0)
        ::rlpo::detail::fail_numerical(fn, "seq_kl: the sum of row ", overflow_row,
                                       " overflows (mask weights x estimates)");
    res.metrics.add("reward_kl_penalty", mean_sum, rows);
    res.metrics.set("reward_kl_penalty_coeff", beta);
    ::rlpo::detail::check_finite_result(fn, 0.0, res.metrics);
    return res;
}

}  // namespace rlpo::penalties
