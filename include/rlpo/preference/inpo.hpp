#pragma once
/// \file
/// INPO — Iterative Nash Policy Optimization: "Iterative Nash Policy Optimization: Aligning LLMs
/// with General Preferences via No-Regret Learning" (Zhang et al., arXiv 2407.00617). One
/// online-mirror-descent step of a self-play preference game, recovered as a squared loss on
/// pairs sampled from the previous iterate π_t.
///
/// Inputs (each `[B]`, float or double, any Eigen vector or map; N×1 or 1×N): per-sequence
/// log-probs of the preferred (y_w, "chosen") and dispreferred (y_l, "rejected") completions
/// under the policy being trained (π_c, π_r), the reference (ref_c, ref_r) and the frozen
/// previous iterate (prev_c, prev_r). With Δ_x = log x(y_w) − log x(y_l) for x ∈ {π, ref, prev},
/// per pair
///
///     h = Δ_π − (τ/η)·Δ_ref − ((η − τ)/η)·Δ_prev,     ℓ = (h − 1/(2η))²,
///
/// and L = (1/N)·Σ_i ℓ_i, N = B or `num_pairs` (the global pair count of a batch split into
/// micro-batches). η is the OMD parameter (an inverse step size: the minimiser of L is
/// π_{t+1} ∝ exp(P(y ≻ π_t)/η)·π_ref^{τ/η}·π_t^{1−τ/η}), τ the KL strength of the game. The
/// log-probs are sequence sums in the paper and in ntlfi/ENPO; smiles724/MNPO (which generalises
/// INPO) feeds SimPO's per-token *means* (`average_log_prob=True`): pass means to reproduce it.
///
/// **Gradient** w.r.t. the two policy inputs only (reference and previous iterate are
/// constants), one `[2, B]` row-major matrix (row 0 chosen, row 1 rejected, as `dpo_loss`):
/// ∂L/∂π_c,i = 2·(h_i − 1/(2η))/N = −∂L/∂π_r,i.
///
/// **Metrics** (ntlfi/ENPO's names, means over the pairs): `delta_pi_mean`, `delta_ref_mean`,
/// `delta_t_mean` (Δ_prev), `h_mean`, `h_minus_target` (mean of h − 1/(2η)); and TRL's
/// `logps/chosen`, `logps/rejected` (mean π_c, π_r), as MNPO logs them.
///
/// **Defaults** (the paper's practical setting, as both reimplementations state it):
/// η = 0.0075, τ = η/3 (unset `tau`: τ/η = 1/3 exactly). `INPOOptions::mnpo()` reproduces MNPO's
/// `ratio = 0.3333` (τ = 0.3333·η).
///
/// **Source**: no code by the paper's authors is public. Two independent reimplementations agree
/// on the formula above: ntlfi/ENPO (commit 7d1c565; `workers/train_inpo.py`,
/// `INPOTrainer.compute_loss`, and `algos/specs/inpo.md`; summed log-probs, mean over the batch)
/// and smiles724/MNPO (commit b8317e9; `mnpo_scripts/mnpo_trainer.py`, `mnpo_loss` with one
/// history entry of weight 1: logits = Δ_π − ratio·Δ_ref − (1 − ratio)·Δ_prev, losses =
/// (logits − 1/(2η))²). rlpo follows ENPO (sums; the validation 0 < τ < η is ENPO's).
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::inpo_loss`): an input not a
/// vector or of a size other than `policy_chosen_logps`'s, NaN or ±inf entries (naming the input
/// and the pair), η ≤ 0 or non-finite, τ not in (0, η), `num_pairs` ≤ 0. B = 0 gives value 0,
/// gradient 0, metrics 0.

#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>

#include <cmath>
#include <optional>
#include <vector>

namespace rlpo::preference {

struct INPOOptions {
    double eta = 0.0075;  ///< η, the OMD parameter (inverse step size)
    /// τ, the KL strength; unset: η/3 (the paper's setting).
    std::optional<double> tau{};
    /// Denominator of the mean: the global pair count (unset: the local B).
    std::optional<double> num_pairs{};

    /// The paper's setting: η 0.0075, τ = η/3.
    static INPOOptions paper() { return INPOOptions{}; }
    /// smiles724/MNPO's `MNPOConfig` (ratio 0.3333, η 0.0075) with one history entry.
    static INPOOptions mnpo() {
        INPOOptions o;
        o.tau = 0.3333 * o.eta;
        return o;
    }
    /// τ in effect.
    double tau_value() const { return tau ? *tau : eta / 3.0; }
};

/// The INPO loss (see the file comment), its gradient w.r.t. the policy log-probs as a `[2, B]`
/// matrix (row 0 chosen, row 1 rejected) and ENPO's metrics.
template <class D1, class D2, class D3, class D4, class D5, class D6>
Result<::rlpo::detail::scalar_t<D1>> inpo_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps,
    const Eigen::MatrixBase<D3>& ref_chosen_logps, const Eigen::MatrixBase<D4>& ref_rejected_logps,
    const Eigen::MatrixBase<D5>& prev_chosen_logps,
    const Eigen::MatrixBase<D6>& prev_rejected_logps, const INPOOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<D1>;
    constexpr const char* fn = "preference::inpo_loss";
    const detail::FourLogps four = detail::read_four(fn, policy_chosen_logps, policy_rejected_logps,
                                                     ref_chosen_logps, ref_rejected_logps);
    const Index B = four.B;
    const std::vector<double>&pc = four.pc, &pr = four.pr, &rc = four.rc, &rr = four.rr;
    const std::vector<double> tc = four.read("prev_chosen_logps", prev_chosen_logps);
    const std::vector<double> tr = four.read("prev_rejected_logps", prev_rejected_logps);
    ::rlpo::detail::check_positive(fn, "eta", opts.eta);
    const double eta = opts.eta, tau = opts.tau_value();
    RLPO_CHECK(std::isfinite(tau) && tau > 0 && tau < eta, fn,
               "tau: must be in (0, eta) (0 < τ < η), given tau ", tau, " with eta ", eta);
    if (opts.num_pairs) ::rlpo::detail::check_positive(fn, "num_pairs", *opts.num_pairs);

    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, 2, B);
    const double n = opts.num_pairs ? *opts.num_pairs : static_cast<double>(B);
    const double w_ref = tau / eta, w_prev = (eta - tau) / eta, target = 1.0 / (2.0 * eta);
    double sum = 0.0, s_pi = 0.0, s_ref = 0.0, s_prev = 0.0, s_h = 0.0, s_lc = 0.0, s_lr = 0.0;
    for (Index i = 0; i < B; ++i) {
        const std::size_t k = static_cast<std::size_t>(i);
        const double d_pi = pc[k] - pr[k], d_ref = rc[k] - rr[k], d_prev = tc[k] - tr[k];
        const double h = d_pi - w_ref * d_ref - w_prev * d_prev;
        const double e = h - target;
        sum += e * e;
        detail::put_finite(fn, g, 0, i, 2 * e / n);
        detail::put_finite(fn, g, 1, i, -2 * e / n);
        s_pi += d_pi;
        s_ref += d_ref;
        s_prev += d_prev;
        s_h += h;
        s_lc += pc[k];
        s_lr += pr[k];
    }
    res.value = g.coef() * (B > 0 ? sum / n : 0.0);
    const double nb = static_cast<double>(B);
    res.metrics.add("delta_pi_mean", s_pi, nb);
    res.metrics.add("delta_ref_mean", s_ref, nb);
    res.metrics.add("delta_t_mean", s_prev, nb);
    res.metrics.add("h_mean", s_h, nb);
    res.metrics.add("h_minus_target", s_h - nb * target, nb);
    res.metrics.add("logps/chosen", s_lc, nb);
    res.metrics.add("logps/rejected", s_lr, nb);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
