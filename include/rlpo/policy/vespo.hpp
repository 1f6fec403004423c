#pragma once
/// \file
/// VESPO: variational sequence-level soft policy optimisation — a REINFORCE-style loss whose
/// tokens are weighted by a detached, Gamma-shaped function of the *sequence* importance ratio,
/// in place of PPO's hard clip.
///
/// Per row i, with lr_it = logp_it − old_logp_it and the optional importance weights ρ_it
/// (`is_weights`, see below):
///
///     log w_i = clamp( Σ_t m_it·clamp(lr_it, −20, 20) + Σ_{t: m_it≠0} clamp(log ρ_it, ln 1e-8, 20),
///                      ln 1e-8, 20 )                         (a sum, not GSPO's mean)
///     w_i     = exp(log w_i)
///
/// and per unmasked token, with (k, λ) = (k₊, λ₊) where A_it ≥ 0 and (k₋, λ₋) where A_it < 0,
/// λ floored at 1e-4:
///
///     φ_it = exp( λ + k·log w_i − λ·w_i )  = e^λ · w_i^k · e^{−λ w_i}   (φ(1) = 1; a non-finite
///                                                                       φ becomes 0)
///     ℓ_it = −sg(φ_it) · A_it · logp_it
///
/// With GRPO's sequence advantages (constant over a row) φ_it = φ_i, one weight per sequence.
/// φ rises as w^k below w = k/λ and decays as e^{−λw} above it: stale or off-policy sequences
/// (w far from 1) are softly down-weighted instead of clipped. L = Σ_i c_i Σ_t m_it·ℓ_it under the
/// caller's Normalizer; TRL aggregates vespo as dapo (a global token mean: TokenMean with
/// `num_tokens` = num_items_in_batch / num_processes, see `rlpo::trl_normalizer`).
///
/// **Gradient** w.r.t. `logp`: φ is detached (computed without gradient in the anchor), so
/// ∂ℓ_it/∂logp_it = −φ_it·A_it; no gradient flows through w_i.
///
/// **`is_weights`** (truncated/masked IS weights between the rollout engine and the trainer)
/// do **not** multiply VESPO's per-token loss, unlike every other surrogate: as in TRL they are
/// folded into the sequence weight in log space (the second sum above, over the row's unmasked
/// tokens, a weight of 0 counting as ln 1e-8). A sequence-level weight ρ_i is given as ρ_i at
/// one unmasked token of the row and 1 elsewhere. (TRL sums log ρ over all T columns; its
/// padding holds ρ = 1, so the sums agree; rlpo never reads masked entries.)
///
/// **Metrics**: `vespo/phi_seq_mean` — the mean over non-empty rows of the row's (mask-weighted)
/// token mean of φ, i.e. the mean of φ_i over the sequences (TRL's `global_masked_mean` of its
/// (B, 1) φ, which also counts empty rows, with φ = 1); `ppo_kl` — the mean over unmasked tokens
/// of −clamp(lr, −20, 20).
///
/// **Source and anchor**: "VESPO: Variational Sequence-Level Soft Policy Optimization" (arXiv
/// 2602.10693). Anchor: TRL's GRPOTrainer, `loss_type="vespo"` (trl/trainer/grpo_trainer.py,
/// `get_gamma_weights` and `_compute_loss`, with the default importance_sampling_level="token",
/// which TRL requires for vespo). Defaults are TRL's GRPOConfig `vespo_k_pos` = 2,
/// `vespo_lambda_pos` = 3, `vespo_k_neg` = 3, `vespo_lambda_neg` = 2 (`VESPOOptions::trl()`
/// returns the same); the clamps (±20 per token, [ln 1e-8, 20] for the sequence) are the
/// anchor's constants. rlpo computes in double: where TRL's float32 exp(log φ) would overflow
/// to inf (log φ > 88.7, only for very large k) and be zeroed, rlpo keeps the finite φ.
///
/// **Bad input**: shapes differing from `logp` → rlpo::invalid_argument (reported as
/// `policy::vespo`); k₊ or k₋ negative or non-finite, λ₊ or λ₋ negative or non-finite →
/// rlpo::invalid_argument (TRL silently floors a negative λ at 1e-4); NaN under a non-zero mask
/// → rlpo::invalid_argument naming the input and position; both log-probs −inf at one token
/// (log-ratio undefined) is reported; logp = −inf (ℓ = ±inf where φ·A ≠ 0, undefined where
/// φ·A = 0) and any other non-finite per-token loss or gradient → rlpo::invalid_argument listing
/// the inputs; value and metrics checked finite (rlpo::numerical_error); is_weights of another shape or negative / non-finite under the
/// mask → rlpo::invalid_argument. An empty mask gives value 0, gradient 0 and metrics 0.

#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

namespace rlpo::policy {

struct VESPOOptions {
    double k_pos = 2.0;       ///< k₊: power of w for A ≥ 0 (TRL `vespo_k_pos`)
    double lambda_pos = 3.0;  ///< λ₊: decay for A ≥ 0 (TRL `vespo_lambda_pos`)
    double k_neg = 3.0;       ///< k₋: power of w for A < 0 (TRL `vespo_k_neg`)
    double lambda_neg = 2.0;  ///< λ₋: decay for A < 0 (TRL `vespo_lambda_neg`)

    /// TRL GRPOTrainer loss_type "vespo" with GRPOConfig's vespo_* defaults.
    static VESPOOptions trl(double k_pos = 2.0, double lambda_pos = 3.0, double k_neg = 3.0,
                            double lambda_neg = 2.0) {
        return VESPOOptions{k_pos, lambda_pos, k_neg, lambda_neg};
    }
};

namespace detail {
inline void validate(const char* fn, const VESPOOptions& o) {
    const std::pair<const char*, double> params[] = {{"k_pos", o.k_pos},
                                                     {"lambda_pos", o.lambda_pos},
                                                     {"k_neg", o.k_neg},
                                                     {"lambda_neg", o.lambda_neg}};
    for (const auto& p : params)
        RLPO_CHECK(p.second >= 0 && std::isfinite(p.second), fn, p.first,
                   ": must be finite and >= 0, given ", p.second);
}

/// VESPO's entry in the shared preamble (policy/detail/driver.hpp).
struct VESPORows {
    using Options = VESPOOptions;
    static constexpr const char* name = "policy::vespo";
    static constexpr bool reads_old_logp = true;
    explicit VESPORows(const VESPOOptions& o) { validate(name, o); }
};

/// The anchor's clamps.
inline constexpr double vespo_token_clamp = 20.0;
inline double vespo_log_floor() { return std::log(1e-8); }

/// φ for one token: TRL's gamma weight in log space, non-finite → 0.
inline double vespo_phi(double log_w, double w, double k, double lambda) {
    const double lam = std::max(lambda, 1e-4);
    const double phi = std::exp(lam + k * log_w - lam * w);
    return std::isfinite(phi) ? phi : 0.0;
}
}  // namespace detail

/// VESPO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`; `advantages` per token
/// (broadcast sequence advantages over T). `is_weights` enter the sequence weight (see above).
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> vespo(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const VESPOOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    detail::SurrogateCall<S, detail::VESPORows> c(logp, old_logp, advantages, mask, opts, norm, out,
                                                  is_weights, false);
    const Index B = c.lp.rows(), T = c.lp.cols();
    const double L = detail::vespo_token_clamp, lo = detail::vespo_log_floor();
    // The sequence weights first (log w_i, w_i); rows in order, so the first NaN reported is
    // the first in row order.
    std::vector<double> log_w(static_cast<std::size_t>(B), 0.0), w(log_w.size(), 1.0);
    for (Index i = 0; i < B; ++i) {
        if (c.w.len[static_cast<std::size_t>(i)] <= 0) continue;
        double sum = 0.0;
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(c.m(i, t));
            if (mk == 0) continue;
            const double lr = c.log_ratio(i, t);
            sum += mk * std::clamp(lr, -L, L);
            if (c.is_weights) sum += std::clamp(std::log(c.weight_at(i, t)), lo, L);
        }
        const auto r = static_cast<std::size_t>(i);
        log_w[r] = std::clamp(sum, lo, L);
        w[r] = std::exp(log_w[r]);
    }
    // Stats: 0 φ/|y_i| (row means of φ), 1 −clamped lr.
    const auto pass = c.template tokens<2>(
        [&](Index i, Index t, std::array<double, 2>& st) -> ::rlpo::detail::LossGrad {
            const auto r = static_cast<std::size_t>(i);
            const double a = static_cast<double>(c.A(i, t)), x = static_cast<double>(c.lp(i, t));
            const double lr = x - static_cast<double>(c.olp(i, t));
            const bool pos = a >= 0;
            const double phi = detail::vespo_phi(log_w[r], w[r], pos ? opts.k_pos : opts.k_neg,
                                                 pos ? opts.lambda_pos : opts.lambda_neg);
            st[0] = phi / c.w.len[r];
            st[1] = -std::clamp(lr, -L, L);
            return {-phi * a * x, -phi * a};
        });
    c.res.metrics.add("vespo/phi_seq_mean", pass.stats[0], c.w.local_seqs);
    c.res.metrics.add("ppo_kl", pass.stats[1], pass.count);
    return c.finish(pass.value);
}

}  // namespace rlpo::policy
