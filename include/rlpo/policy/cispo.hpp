#pragma once
/// \file
/// CISPO: clipped importance-sampling-weight policy optimisation (MiniMax-M1).
///
/// Per unmasked token, with lr = clamp(logp − old_logp, −L, L) and r = exp(lr):
///
///     w_is = sg(clip(r, 1 − ε_l, 1 + ε_h))      bound = Clip (MiniMax-M1 paper, verl "cispo")
///     w_is = sg(min(r, ε_max))                   bound = Cap  (ScaleRL, TRL loss_type "cispo")
///     l    = −w_is · A · logp                    (times the optional per-token weight w)
///
/// Unlike PPO, no token loses its gradient: the IS weight is clipped, not the update.
///
/// **Gradient** w.r.t. `logp`: ∂l/∂logp = −w·w_is·A (w_is is detached, as in both anchors).
///
/// **Metrics** (means over unmasked tokens, unweighted):
///   * `pg_clipfrac`       — fraction where the IS weight was bounded (r ≠ w_is), verl's definition;
///   * `pg_clipfrac_lower` — 0 (reported for compatibility, as verl does);
///   * `ppo_kl`            — mean of −lr (clamped lr);
///   * `cispo_clip_ratio`  — Cap form only: fraction with r > ε_max and A > 0 (TRL's metric).
///
/// **Defaults and presets**: Chen et al. 2025, "MiniMax-M1" (arXiv 2506.13585) clip the IS weight
/// to [1 − ε_l, 1 + ε_h] and leave the lower bound effectively off (ε_l large; any ε_l ≥ 1
/// turns it off here); the defaults are verl's (`CISPOOptions::verl()`: Clip, ε_l = ε_h = 0.2,
/// L = 20). `CISPOOptions::trl(ε_max = 5)`: TRL's GRPOTrainer with loss_type "cispo": Cap form,
/// ε_max = `epsilon_high` (recommended 5.0 after ScaleRL, arXiv 2510.13786), no log-ratio clamp.
/// TRL aggregates cispo as a global token mean (`dapo`): pass TokenMean with global counts.
///
/// **Bad input**: shapes differing from `logp` → rlpo::invalid_argument; ε_l, ε_h, ε_max or
/// L ≤ 0 → rlpo::invalid_argument; NaN under a non-zero mask → rlpo::invalid_argument naming
/// the input. A per-token loss or gradient that is not finite → rlpo::invalid_argument listing
/// the inputs at that position: logp = −inf (l = ±inf for A ≠ 0, undefined for A = 0, also both
/// log-probs −inf) and finite extremes whose −w_is·A·logp overflows. The value and metrics are
/// checked finite (rlpo::numerical_error; see the non-finite policy in docs/policy.md). An
/// empty mask gives value 0, gradient 0 and metrics 0.

#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <limits>

namespace rlpo::policy {

enum class CISPOBound { Clip, Cap };

struct CISPOOptions {
    CISPOBound bound = CISPOBound::Clip;
    double clip_low = 0.2;   ///< ε_l (Clip form): lower bound 1 − ε_l (≥ 1: no lower bound)
    double clip_high = 0.2;  ///< ε_h (Clip form): upper bound 1 + ε_h
    double cap = 5.0;        ///< ε_max (Cap form): w_is = min(r, ε_max)
    /// L: log-ratio clamp before exp; +inf disables it.
    double log_ratio_clamp = 20.0;

    /// verl `compute_policy_loss_cispo`: Clip form, ε 0.2 / 0.2 (actor clip_ratio), clamp ±20.
    static CISPOOptions verl() { return CISPOOptions{}; }
    /// TRL GRPOTrainer loss_type "cispo": w_is = min(r, ε_max), no clamp.
    static CISPOOptions trl(double eps_max = 5.0) {
        CISPOOptions o;
        o.bound = CISPOBound::Cap;
        o.cap = eps_max;
        o.log_ratio_clamp = std::numeric_limits<double>::infinity();
        return o;
    }
};

namespace detail {
inline void validate(const char* fn, const CISPOOptions& o) {
    ::rlpo::detail::check_positive(fn, "clip_low", o.clip_low);
    ::rlpo::detail::check_positive(fn, "clip_high", o.clip_high);
    ::rlpo::detail::check_positive(fn, "cap", o.cap);
    check_clamp(fn, "log_ratio_clamp", o.log_ratio_clamp);
}
}  // namespace detail

namespace detail {
/// The CISPO token kernel (run by `run_tokens`, policy/detail/driver.hpp).
/// Stats: 0 bounded (r ≠ w_is), 1 −lr, 2 TRL cispo_clip_ratio.
struct CISPOKernel {
    using Options = CISPOOptions;
    static constexpr const char* name = "policy::cispo";
    static constexpr std::size_t stats = 3;
    static constexpr bool reads_old_logp = true;

    explicit CISPOKernel(const CISPOOptions& o)
        : lo((validate(name, o), 1.0 - o.clip_low)),
          hi(1.0 + o.clip_high),
          L(o.log_ratio_clamp),
          eps_max(o.cap),
          cap(o.bound == CISPOBound::Cap) {}

    ::rlpo::detail::LossGrad operator()(const Token& tok, std::array<double, 3>& st) const {
        const double a = tok.adv, x = tok.logp;
        const double raw = x - tok.old_logp;
        if (std::isnan(raw) || std::isnan(a)) return {raw + a, 0.0};
        const double lr = std::clamp(raw, -L, L);
        const double r = std::exp(lr);
        const double wis = cap ? std::min(r, eps_max) : std::clamp(r, lo, hi);
        const double wt = tok.weight;
        st[0] = r != wis ? 1.0 : 0.0;
        st[1] = -lr;
        st[2] = (cap && r > eps_max && a > 0) ? 1.0 : 0.0;
        return {-wt * wis * a * x, -wt * wis * a};
    }
    void report(Metrics& m, const std::array<double, 3>& st, double n) const {
        m.add("pg_clipfrac", st[0], n);
        m.add("pg_clipfrac_lower", 0.0, n);
        m.add("ppo_kl", st[1], n);
        if (cap) m.add("cispo_clip_ratio", st[2], n);
    }

    double lo, hi, L, eps_max;
    bool cap;
};
}  // namespace detail

/// CISPO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> cispo(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const CISPOOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    return detail::run_tokens<detail::CISPOKernel>(logp, old_logp, advantages, mask, opts, norm,
                                                   out, is_weights);
}

}  // namespace rlpo::policy
