#pragma once
/// \file
/// LUSPO: length-unbiased sequence policy optimisation — GSPO's sequence-level clipped loss with
/// each sequence's loss scaled by its length.
///
/// Per row i with |y_i| = Σ_t m_it unmasked tokens, lr_it = logp − old_logp (no clamp):
///
///     s_i = exp( Σ_t m_it·lr_it / |y_i| )                       (geometric-mean ratio, as GSPO)
///     ℓ_it = max( −A_it·s_i, −A_it·clip(s_i, 1 − ε_l, 1 + ε_h) )  (times the optional weight w_it)
///     L = Σ_i c_i Σ_t m_it·ℓ_it,   c_i = 1/N_seq                  (seq-mean-token-sum)
///
/// With advantages constant over a row (GRPO's sequence advantages broadcast over T) this is
/// L = (1/N_seq)·Σ_i |y_i|·ℓ_i: GSPO's sequence loss ℓ_i multiplied by the sequence length and
/// averaged over the sequences. GSPO (seq-mean-token-mean) weighs every sequence equally, which
/// biases its gradient against long responses; multiplying by |y_i| removes that bias.
///
/// **Gradient** w.r.t. `logp`: s_i depends on every unmasked token of its row,
/// ∂s_i/∂logp_it = s_i·m_it/|y_i|, so ∂L/∂logp_it = (m_it/|y_i|)·Σ_u c_i·m_iu·w_iu·∂ℓ_iu/∂log s_i,
/// with ∂ℓ/∂log s = −A·s on the selected branch of the max (0 on the clipped branch outside
/// [1 − ε_l, 1 + ε_h]; ties split in half, as `torch.maximum`).
///
/// **Metrics**: GSPO's — `pg_clipfrac` (fraction of tokens whose clipped branch is strictly
/// larger), `pg_clipfrac_lower` (0), `ppo_kl` (mean of −lr).
///
/// **Source and anchor**: "Length-Unbiased Sequence Policy Optimization" (LUSPO, arXiv
/// 2602.05261), section 5.1: ε_l = 2e-3, ε_h = 2.5e-3 (the defaults here). Anchor: TRL's
/// GRPOTrainer, `loss_type="luspo"` with `importance_sampling_level="sequence"`
/// (trl/trainer/grpo_trainer.py, `_compute_loss`): the (B, 1) sequence loss times
/// `mask.sum(1)`, then `.mean()` over all B rows; the ratio is not capped. To reproduce it
/// exactly set `norm.num_seqs = B` (TRL counts empty rows too; rlpo's default N_seq
/// counts the non-empty ones), and for TRL's gradient accumulation the global B of the step.
/// TRL's `luspo` with token-level importance sampling (which it warns against) averages over
/// all B·T positions, padding included, and is not reproduced; nor is TRL's `delta` (two-sided
/// clip) for this loss. The KL term (β) is a separate penalty in rlpo (penalties/).
///
/// **Bad input**: shapes differing from `logp`, ε_l ≤ 0 or ε_h ≤ 0 → rlpo::invalid_argument
/// (reported as `policy::luspo`); NaN under a non-zero mask → rlpo::invalid_argument naming the
/// input and position; a row whose log-ratios sum to NaN (+inf and −inf) is reported. An empty
/// mask gives value 0, gradient 0 and metrics 0.

#include <rlpo/policy/detail/driver.hpp>
#include <rlpo/policy/gspo.hpp>

#include <limits>
#include <optional>

namespace rlpo::policy {

struct LUSPOOptions {
    double clip_low = 2e-3;     ///< ε_l (LUSPO section 5.1; TRL `epsilon`)
    double clip_high = 2.5e-3;  ///< ε_h (LUSPO section 5.1; TRL `epsilon_high`)
    /// Forced aggregation: seq-mean-token-sum is what makes the loss length-unbiased (each row's
    /// loss times its length, averaged over rows); nullopt = the Normalizer's mode.
    std::optional<Aggregation> aggregation = Aggregation::SeqMeanTokenSum;

    /// TRL GRPOTrainer loss_type "luspo" (importance_sampling_level="sequence"), with the clip
    /// range its docs give for the paper's setting (epsilon 2e-3, epsilon_high 2.5e-3).
    static LUSPOOptions trl(double clip_low = 2e-3, double clip_high = 2.5e-3) {
        LUSPOOptions o;
        o.clip_low = clip_low;
        o.clip_high = clip_high;
        return o;
    }
};

namespace detail {
inline void validate(const char* fn, const LUSPOOptions& o) {
    ::rlpo::detail::check_positive(fn, "clip_low", o.clip_low);
    ::rlpo::detail::check_positive(fn, "clip_high", o.clip_high);
}

/// LUSPO's entry in the shared preamble; the row pass is GSPO's (`gspo_rows`).
struct LUSPORows {
    using Options = LUSPOOptions;
    static constexpr const char* name = "policy::luspo";
    static constexpr bool reads_old_logp = true;
    explicit LUSPORows(const LUSPOOptions& o) { validate(name, o); }
};
}  // namespace detail

/// LUSPO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`; `advantages` per token
/// (broadcast sequence advantages over T).
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> luspo(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const LUSPOOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    GSPOOptions math;  // GSPO at sequence level, uncapped, with LUSPO's clip range
    math.clip_low = opts.clip_low;
    math.clip_high = opts.clip_high;
    math.level = GSPOLevel::Sequence;
    math.log_ratio_cap = std::numeric_limits<double>::infinity();
    return detail::gspo_rows<detail::LUSPORows>(logp, old_logp, advantages, mask, opts, math, norm,
                                                out, is_weights);
}

}  // namespace rlpo::policy
