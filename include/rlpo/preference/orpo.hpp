#pragma once
/// \file
/// ORPO: odds-ratio preference optimisation (arXiv 2403.07691), with TRL's `ORPOTrainer`
/// semantics (`odds_ratio_loss` + the chosen NLL of `get_batch_loss_metrics`).
///
/// Inputs (`[B]` each, float or double): the *summed* log-probs π_c, π_r of the chosen and
/// rejected completions under the policy and the completion lengths |y_c|, |y_r|
/// (`CompletionLengths`, required). No reference model. With the length-averaged log-probs
/// ā = π/|y| (TRL's `average_log_prob=True`; |y| clamped ≥ 1), λ = β:
///
///     z_i   = (ā_c − ā_r) − (log(1 − e^{ā_c}) − log(1 − e^{ā_r}))      (log odds ratio)
///     L     = NLL − λ·Σ_i logσ(z_i) / n                                (L_SFT + λ·L_OR)
///     NLL   = −Σ_i π_c,i / N                                           (token-mean NLL of chosen)
///
/// n = B (TRL's `losses.mean()`) or `num_pairs`; N = Σ_i |y_c,i| or `num_nll_tokens`. log(1 − e^a)
/// is `rlpo::log1mexp` (Mächler's split at −log 2, as TRL's `log1mexp`), exact near a → 0⁻.
///
/// **NLL tokens.** TRL's decoder-only ORPO takes the NLL over the prompt *and* the chosen
/// completion (`labels = input_ids` where attended); its encoder-decoder path and Liger-Kernel's
/// `orpo_loss` (default `nll_target`) over the chosen completion. rlpo computes it over the chosen
/// completion tokens, from π_c and |y_c|; to reproduce TRL's decoder-only value, pass the total
/// (prompt + completion) token count in `num_nll_tokens` and add −(Σ prompt log-probs)/N — the
/// prompt tokens' gradient is −1/N each — yourself. `compute_nll = false` drops the term (Liger's
/// `compute_nll_loss`).
///
/// **Gradient**: w.r.t. the summed policy log-probs, one `[2, B]` matrix (row 0 ∂L/∂π_c, row 1
/// ∂L/∂π_r; TRL's `[chosen; rejected]` layout). With ∂z/∂ā_c = 1/(1 − e^{ā_c}) = −1/expm1(ā_c),
/// ∂z/∂ā_r = 1/expm1(ā_r):
/// ∂L/∂π_c,i = −λ·σ(−z_i)·∂z/∂ā_c / (n·|y_c,i|) − 1/N,
/// ∂L/∂π_r,i = −λ·σ(−z_i)·∂z/∂ā_r / (n·|y_r,i|).
///
/// **Metrics** (TRL's names; means over the pairs): `rewards/chosen`, `rewards/rejected` (λ·ā),
/// `rewards/accuracies` (strictly), `rewards/margins`, `logps/chosen`, `logps/rejected` (mean
/// ā), `nll_loss` (kept as (−Σπ_c, Σ|y_c|): micro-batches merge to the token mean),
/// `log_odds_ratio` (mean logσ(z)), `log_odds_chosen` (mean z). TRL's `logits/*` need the logits
/// and are not here.
///
/// **Defaults** (TRL ORPOConfig): β = λ = 0.1, NLL on.
///
/// **Anchor**: TRL `trl/experimental/orpo/orpo_trainer.py` (`log1mexp`, `odds_ratio_loss`,
/// `concatenated_forward`, `get_batch_loss_metrics`), main f2cd577 (2026-07); Liger-Kernel
/// `chunked_loss/orpo_loss.py` (the same odds ratio; NLL over the completion). Decisions: TRL
/// casts the log-probs to float32 before the odds ratio (`.float()`); rlpo computes in double.
/// The NLL's token set, above.
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::orpo_loss`): an input not a
/// vector or of a size other than `policy_chosen_logps`'s, NaN or ±inf entries (naming the input
/// and the pair), lengths of the wrong size or negative, an averaged log-prob ā ≥ 0 (a
/// probability of 1 or more has no odds: log(1 − e^ā) is −inf or NaN), β ≤ 0, `num_pairs` ≤ 0,
/// `num_nll_tokens` < 0 or non-finite. B = 0 gives value 0, an empty gradient and metrics 0; N = 0
/// gives NLL = 0 (TRL: NaN).

#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>
#include <rlpo/preference/detail/reference_free.hpp>
#include <rlpo/preference/lengths.hpp>

#include <cmath>
#include <optional>
#include <vector>

namespace rlpo::preference {

struct ORPOOptions {
    double beta = 0.1;        ///< λ: weight of the odds-ratio term (TRL `beta`)
    bool compute_nll = true;  ///< add the NLL of the chosen completions (TRL: always)
    /// Denominator of the pair mean: the global pair count of a batch split into micro-batches.
    std::optional<double> num_pairs{};
    /// Denominator of the NLL: the global NLL token count (unset: Σ|y_c| of this call).
    std::optional<double> num_nll_tokens{};

    /// Current TRL (ORPOConfig defaults).
    static ORPOOptions trl() { return {}; }
};

/// ORPO (see the file comment): value, the gradient w.r.t. the summed policy log-probs as a
/// `[2, B]` matrix (row 0 chosen, row 1 rejected) and TRL's metrics.
template <class D1, class D2>
Result<::rlpo::detail::scalar_t<D1>> orpo_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps, const CompletionLengths& lengths,
    const ORPOOptions& opts = {}, const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<D1>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "preference::orpo_loss";
    const detail::SeqPairs d =
        detail::read_seq_pairs(fn, policy_chosen_logps, policy_rejected_logps, lengths);
    ::rlpo::detail::check_positive(fn, "beta", opts.beta);
    if (opts.num_pairs) ::rlpo::detail::check_positive(fn, "num_pairs", *opts.num_pairs);
    if (opts.num_nll_tokens)
        ::rlpo::detail::check_nonnegative(fn, "num_nll_tokens", *opts.num_nll_tokens);
    const std::size_t B = d.size();

    const double n = opts.num_pairs ? *opts.num_pairs : static_cast<double>(B);
    std::vector<double> ac(B), ar(B), rc(B), rr(B), gc(B), gr(B);
    double sum = 0.0, sum_z = 0.0;
    for (std::size_t i = 0; i < B; ++i) {
        ac[i] = d.pc[i] / d.clen(i);
        ar[i] = d.pr[i] / d.rlen(i);
        RLPO_CHECK(ac[i] < 0, fn,
                   "policy_chosen_logps: the length-averaged log-prob must be < 0 (odds need a "
                   "probability < 1), given ",
                   ac[i], " at pair ", i);
        RLPO_CHECK(ar[i] < 0, fn,
                   "policy_rejected_logps: the length-averaged log-prob must be < 0 (odds need a "
                   "probability < 1), given ",
                   ar[i], " at pair ", i);
        const double z = (ac[i] - ar[i]) - (log1mexp(ac[i]) - log1mexp(ar[i]));
        const double ls = log_sigmoid(z);
        sum += ls;
        sum_z += z;
        // λ·σ(−z)/(n·(1 − e^ā)·|y|) in log space: as ā → 0⁻, 1/(1 − e^ā) overflows while σ(−z)
        // underflows (their product is finite; formed directly it is inf·0 = NaN).
        const double lw = std::log(opts.beta) + log_sigmoid(-z) - std::log(n);
        gc[i] = -std::exp(lw - log1mexp(ac[i]) - std::log(d.clen(i)));
        gr[i] = std::exp(lw - log1mexp(ar[i]) - std::log(d.rlen(i)));
        rc[i] = opts.beta * ac[i];
        rr[i] = opts.beta * ar[i];
    }
    const detail::NllTerm nll(d, opts.num_nll_tokens, opts.compute_nll);

    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, 2, static_cast<Index>(B));
    if (g.active())
        for (std::size_t i = 0; i < B; ++i) {
            const Index k = static_cast<Index>(i);
            detail::put_finite(fn, g, 0, k, gc[i] - (nll.on ? 1.0 / nll.N : 0.0));
            detail::put_finite(fn, g, 1, k, gr[i]);
        }
    res.value = g.coef() * (nll.value - (B > 0 ? opts.beta * sum / n : 0.0));
    detail::add_pair_metrics(res.metrics, rc, rr, ac, ar);
    res.metrics.add("nll_loss", opts.compute_nll ? -nll.sum_c : 0.0, d.chosen_tokens);
    const double nb = static_cast<double>(B);
    res.metrics.add("log_odds_ratio", sum, nb);
    res.metrics.add("log_odds_chosen", sum_z, nb);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
