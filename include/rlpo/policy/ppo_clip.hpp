#pragma once
/// \file
/// PPO clipped surrogate, with clip-higher (ε_l ≠ ε_h), optional dual-clip and a log-ratio clamp.
///
/// Per unmasked token, with lr = clamp(logp − old_logp, −L, L) and r = exp(lr):
///
///     l1 = −A·r,   l2 = −A·clip(r, 1 − ε_l, 1 + ε_h),   l = max(l1, l2)
///     dual-clip (c > 1, only where A < 0):   l ← min(l, −A·c)
///
/// and the loss is the aggregation (core/aggregation.hpp) of l over the mask.
///
/// **Gradient** w.r.t. `logp`: ∂l1/∂logp = −A·r·[−L ≤ lr_raw ≤ L] (the clamp stops the gradient
/// outside ±L); the clipped branch contributes −A·r·[1−ε_l ≤ r ≤ 1+ε_h]; the dual-clip constant
/// contributes 0. At exact ties of max/min the gradient is split in half between the branches,
/// as PyTorch's `torch.maximum` / `torch.minimum` do, so the result matches autograd everywhere.
///
/// **Metrics** (means over unmasked tokens, mask-weighted, merged exactly across micro-batches):
///   * `pg_clipfrac`       — fraction of tokens where the clipped branch is strictly larger (l2 > l1);
///   * `pg_clipfrac_lower` — fraction where A < 0 and the dual-clip bound is active (0 when off);
///   * `ppo_kl`            — mean of −lr (clamped lr, as verl logs it).
///
/// **Defaults** (PPO, Schulman et al. 2017; dual-clip from Ye et al. 2020, "Mastering Complex
/// Control in MOBA Games with Deep RL"; clip-higher from DAPO, Yu et al. 2025): ε_l = ε_h = 0.2,
/// dual-clip off, L = 20 (verl's clamp). Presets: `PPOClipOptions::verl()` (dual-clip c = 3,
/// L = 20: verl's `compute_policy_loss_vanilla`), `::openrlhf()` (no dual-clip, no clamp),
/// `::trl()` (no dual-clip, no clamp), `::dapo()` (ε_h = 0.28).
///
/// **Bad input**: shapes differing from `logp` → rlpo::invalid_argument; ε_l ≤ 0 or ε_h ≤ 0,
/// dual-clip c ≤ 1, L ≤ 0 → rlpo::invalid_argument; a NaN in any input under a non-zero mask →
/// rlpo::invalid_argument naming the input and position. ±inf log-probs are accepted (the
/// clamp makes them finite) unless both are −inf at the same token (ratio undefined), which is
/// reported. An empty mask gives value 0, gradient 0 and metrics 0.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/token_pass.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace rlpo::policy {

struct PPOClipOptions {
    double clip_low = 0.2;   ///< ε_l: lower clip 1 − ε_l
    double clip_high = 0.2;  ///< ε_h: upper clip 1 + ε_h (DAPO clip-higher: 0.28)
    /// Dual-clip constant c > 1 (applies to tokens with A < 0); unset = off.
    std::optional<double> dual_clip{};
    /// L: log-ratio clamp before exp; +inf disables it.
    double log_ratio_clamp = 20.0;

    /// verl `compute_policy_loss_vanilla`: dual-clip c = 3 always on, clamp ±20.
    static PPOClipOptions verl() {
        PPOClipOptions o;
        o.dual_clip = 3.0;
        return o;
    }
    /// OpenRLHF PolicyLoss: no dual-clip by default, no clamp.
    static PPOClipOptions openrlhf() {
        PPOClipOptions o;
        o.log_ratio_clamp = std::numeric_limits<double>::infinity();
        return o;
    }
    /// TRL GRPOTrainer: ε = 0.2 both sides, no dual-clip, no clamp.
    static PPOClipOptions trl() { return openrlhf(); }
    /// DAPO clip-higher: ε_l = 0.2, ε_h = 0.28.
    static PPOClipOptions dapo() {
        PPOClipOptions o;
        o.clip_high = 0.28;
        return o;
    }
};

namespace detail {
inline void validate(const char* fn, const PPOClipOptions& o) {
    ::rlpo::detail::check_positive(fn, "clip_low", o.clip_low);
    ::rlpo::detail::check_positive(fn, "clip_high", o.clip_high);
    if (o.dual_clip)
        RLPO_CHECK(std::isfinite(*o.dual_clip) && *o.dual_clip > 1.0, fn,
                   "dual_clip: the constant c must be > 1, given ", *o.dual_clip);
    RLPO_CHECK(o.log_ratio_clamp > 0 && !std::isnan(o.log_ratio_clamp), fn,
               "log_ratio_clamp: must be > 0, given ", o.log_ratio_clamp);
}

/// Torch-style max/min of two branches with gradients: returns (value, gradient), ties split.
inline ::rlpo::detail::LossGrad branch_max(double a, double ga, double b, double gb) {
    if (a > b) return {a, ga};
    if (b > a) return {b, gb};
    return {a, 0.5 * (ga + gb)};
}
inline ::rlpo::detail::LossGrad branch_min(double a, double ga, double b, double gb) {
    if (a < b) return {a, ga};
    if (b < a) return {b, gb};
    return {a, 0.5 * (ga + gb)};
}
}  // namespace detail

/// PPO clip loss and its gradient w.r.t. `logp`. All inputs `[B, T]`; `advantages` per token
/// (broadcast sequence-level advantages over T before calling).
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> ppo_clip(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const PPOClipOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::ppo_clip";
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), A(advantages.derived()),
        m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "old_logp", olp, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "advantages", A, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
    detail::validate(fn, opts);

    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, lp.rows(), lp.cols());
    const double lo = 1.0 - opts.clip_low, hi = 1.0 + opts.clip_high, L = opts.log_ratio_clamp;
    const bool dual = opts.dual_clip.has_value();
    const double c = dual ? *opts.dual_clip : 0.0;

    // stats: 0 clipped (l2 > l1), 1 dual-clip hit, 2 −lr
    const auto pass = ::rlpo::detail::token_pass<3, S>(
        fn, m, w, g, {{"logp", &lp}, {"old_logp", &olp}, {"advantages", &A}},
        [&](Index i, Index t, std::array<double, 3>& st) -> ::rlpo::detail::LossGrad {
            const double a = static_cast<double>(A(i, t));
            const double raw = static_cast<double>(lp(i, t)) - static_cast<double>(olp(i, t));
            if (std::isnan(raw) || std::isnan(a)) return {raw + a, 0.0};
            const double lr = std::clamp(raw, -L, L);
            const double r = std::exp(lr);
            const double dr = (raw >= -L && raw <= L) ? r : 0.0;  // ∂r/∂logp
            const double l1 = -a * r, g1 = -a * dr;
            const double rc = std::clamp(r, lo, hi);
            const double l2 = -a * rc, g2 = (r >= lo && r <= hi) ? g1 : 0.0;
            ::rlpo::detail::LossGrad lg = detail::branch_max(l1, g1, l2, g2);
            st[0] = l2 > l1 ? 1.0 : 0.0;
            st[2] = -lr;
            if (dual && a < 0) {
                const double l3 = -a * c;
                st[1] = lg.loss > l3 ? 1.0 : 0.0;
                lg = detail::branch_min(l3, 0.0, lg.loss, lg.grad);
            }
            return lg;
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("pg_clipfrac", pass.stats[0], pass.count);
    res.metrics.add("pg_clipfrac_lower", pass.stats[1], pass.count);
    res.metrics.add("ppo_kl", pass.stats[2], pass.count);
    return res;
}

}  // namespace rlpo::policy
