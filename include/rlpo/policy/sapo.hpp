#pragma once
/// \file
/// SAPO: soft adaptive policy optimisation — a smooth sigmoid gate in place of PPO's hard clip.
///
/// Per unmasked token, with lr = clamp(logp − old_logp, −L, L), r = exp(lr) and
/// τ = τ_pos if A > 0 else τ_neg:
///
///     f(r) = (4/τ)·σ(τ·(r − 1)),     l = −f(r)·A      (times the optional per-token weight w)
///
/// f(1) = 2/τ and f'(1) = 1, so near r = 1 SAPO has PPO's gradient −A·r; far from 1
/// the gradient decays smoothly instead of being cut to 0. A larger τ_neg makes negative
/// updates decay faster (the paper's asymmetry).
///
/// **Gradient** w.r.t. `logp`: ∂l/∂logp = −w·A·4·σ(τ(r−1))·(1 − σ(τ(r−1)))·r inside the clamp,
/// 0 outside it.
///
/// **Normalizer**: verl and TRL both aggregate SAPO seq-mean-token-mean whatever the configured
/// mode; `aggregation = SeqMeanTokenMean` (default) does the same, keeping the Normalizer's
/// global counts; `std::nullopt` uses the caller's mode.
///
/// **Metrics**: `pg_clipfrac` = 0 and `pg_clipfrac_lower` = 0 (nothing is clipped; reported as
/// verl does), `ppo_kl` = mean of −lr (clamped).
///
/// **Defaults**: Gao et al. 2025, "Soft Adaptive Policy Optimization" (arXiv 2511.20347):
/// τ_pos = 1.0, τ_neg = 1.05 — also verl's actor defaults and TRL's `sapo_temperature_pos/neg`.
/// `SAPOOptions::verl()` clamps the log-ratio at ±20 (default); `::trl()` does not clamp.
///
/// **Bad input**: shapes differing from `logp`, τ_pos or τ_neg ≤ 0, L ≤ 0 →
/// rlpo::invalid_argument; NaN under a non-zero mask → rlpo::invalid_argument naming the input.
/// ±inf log-probs are accepted (the gate is bounded), except both −inf at one token (reported);
/// a per-token result that is not finite (huge advantages) → rlpo::invalid_argument listing the
/// inputs, value and metrics checked finite (rlpo::numerical_error).
/// An empty mask gives value 0, gradient 0 and metrics 0.

#include <rlpo/core/math.hpp>
#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <limits>

namespace rlpo::policy {

struct SAPOOptions {
    double tau_pos = 1.0;   ///< τ for A > 0
    double tau_neg = 1.05;  ///< τ for A ≤ 0
    /// L: log-ratio clamp before exp (verl: 20); +inf disables it.
    double log_ratio_clamp = 20.0;
    /// Forced aggregation mode (verl, TRL: seq-mean-token-mean); nullopt = the Normalizer's mode.
    std::optional<Aggregation> aggregation = Aggregation::SeqMeanTokenMean;

    /// verl `compute_policy_loss_sapo` (τ 1.0 / 1.05, clamp ±20, seq-mean-token-mean).
    static SAPOOptions verl() { return SAPOOptions{}; }
    /// TRL GRPOTrainer loss_type "sapo": no clamp, seq-mean-token-mean.
    static SAPOOptions trl() {
        SAPOOptions o;
        o.log_ratio_clamp = std::numeric_limits<double>::infinity();
        return o;
    }
};

namespace detail {
inline void validate(const char* fn, const SAPOOptions& o) {
    ::rlpo::detail::check_positive(fn, "tau_pos", o.tau_pos);
    ::rlpo::detail::check_positive(fn, "tau_neg", o.tau_neg);
    check_clamp(fn, "log_ratio_clamp", o.log_ratio_clamp);
}
}  // namespace detail

namespace detail {
/// The SAPO token kernel (run by `run_tokens`, policy/detail/driver.hpp). Stats: 0 −lr.
struct SAPOKernel {
    using Options = SAPOOptions;
    static constexpr const char* name = "policy::sapo";
    static constexpr std::size_t stats = 1;
    static constexpr bool reads_old_logp = true;

    explicit SAPOKernel(const SAPOOptions& o)
        : L((validate(name, o), o.log_ratio_clamp)), tau_pos(o.tau_pos), tau_neg(o.tau_neg) {}

    ::rlpo::detail::LossGrad operator()(const Token& tok, std::array<double, 1>& st) const {
        const double a = tok.adv;
        const double raw = tok.logp - tok.old_logp;
        if (std::isnan(raw) || std::isnan(a)) return {raw + a, 0.0};
        const double lr = std::clamp(raw, -L, L);
        const double r = std::exp(lr);
        const double tau = a > 0 ? tau_pos : tau_neg;
        const double sg = ::rlpo::sigmoid(tau * (r - 1.0));
        const double dr = (raw >= -L && raw <= L) ? r : 0.0;
        const double wt = tok.weight;
        st[0] = -lr;
        return {-wt * a * (4.0 / tau) * sg, -wt * a * 4.0 * sg * (1.0 - sg) * dr};
    }
    void report(Metrics& m, const std::array<double, 1>& st, double n) const {
        m.add("pg_clipfrac", 0.0, n);
        m.add("pg_clipfrac_lower", 0.0, n);
        m.add("ppo_kl", st[0], n);
    }

    double L, tau_pos, tau_neg;
};
}  // namespace detail

/// SAPO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> sapo(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const SAPOOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    return detail::run_tokens<detail::SAPOKernel>(logp, old_logp, advantages, mask, opts, norm, out,
                                                  is_weights);
}

}  // namespace rlpo::policy
