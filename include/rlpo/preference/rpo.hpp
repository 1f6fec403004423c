#pragma once
/// \file
/// RPO — Regularized Preference Optimization: "Provably Mitigating Overoptimization in RLHF: Your
/// SFT Loss is Implicitly an Adversarial Regularizer" (Liu et al., arXiv 2405.16436). The DPO
/// loss plus an SFT (negative log-likelihood) term on the chosen response, weighted by η·β.
///
/// Inputs (each `[B]`, float or double, as `dpo_loss`): the summed log-probs of the chosen and
/// rejected completions under the policy (π_c, π_r) and the reference (ref_c, ref_r). Per pair
///
///     ℓ_i = ℓ_DPO,i − η'·β·π_c,i,     L = (1/N)·Σ_i ℓ_i,
///
/// with ℓ_DPO any loss type of `dpo_loss` (the paper's is `sigmoid`, −log σ(β·h)), N = B (the
/// authors' `losses.mean()`) or `opts.dpo.num_pairs`, and η' = η, except η' = 0 when η < 1e-6
/// (the authors' trainer switches the term off below that). π_c is the **summed** log-prob of the
/// chosen completion (the paper's "cumulative" SFT loss; its Appendix F variant with the
/// token-mean NLL, `nll_loss_coef` in the authors' OpenRLHF script and TRL's `rpo_alpha`, needs
/// the per-token log-probs and is not this function: add the NLL separately).
///
/// **Gradient** w.r.t. the two policy inputs only, `[2, B]` as `dpo_loss` (row 0 chosen, row 1
/// rejected): ∂L/∂π_c,i = ∂L_DPO/∂π_c,i − η'·β/N, ∂L/∂π_r,i = ∂L_DPO/∂π_r,i.
///
/// **Metrics**: TRL's six, as the authors' trainer logs them (computed by `dpo_loss`: rewards
/// β·(π − ref), unaffected by the SFT term): `rewards/chosen`, `rewards/rejected`,
/// `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`.
///
/// **Defaults** (authors' `recipes/zephyr-7b-beta/rpo/config_full.yaml`): η 0.005, β 0.01, loss
/// type `sigmoid`, label smoothing 0. `RPOOptions::zephyr_gemma()`: β 0.05, η 0.005
/// (`recipes/zephyr-7b-gemma/rpo/config_full.yaml`).
///
/// **Anchor**: YSLIU627/Regularized-Preference-Optimization (commit d0389c4),
/// `alignment-handbook/scripts/rpo_trainer.py`, `DPOTrainer.dpo_loss`: after the loss type's
/// per-pair losses, the trainer subtracts β·η times the summed chosen log-probs
/// (`get_batch_logps`, a masked sum), then takes the mean over the batch. One difference: with
/// `loss_type="ipo"` that trainer divides *all* log-probs by the completion length (so its SFT
/// term becomes a token mean); rlpo's `ipo` reads the lengths inside its own term only (as
/// current TRL), and the SFT term always uses the π_c given (pass the length-averaged π_c to
/// reproduce that trainer's IPO variant).
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::rpo_loss`): every bad input
/// of `dpo_loss` (sizes, NaN/±inf entries naming the input and the pair, β ≤ 0, label smoothing
/// out of range, lengths missing for `ipo`/`sigmoid_norm`, …), and η negative or non-finite.
/// B = 0 gives value 0, gradient 0, metrics 0.

#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>
#include <rlpo/preference/dpo.hpp>

#include <cmath>
#include <optional>
#include <vector>

namespace rlpo::preference {

struct RPOOptions {
    /// The DPO part (loss types, β, label smoothing, `num_pairs`); β also scales the SFT term.
    DPOOptions dpo = DPOOptions::of(DPOLoss::Sigmoid, 0.01);
    /// η: weight of the SFT term relative to β (authors' `eta`); η < 1e-6 switches it off.
    double eta = 0.005;

    /// The paper's Zephyr-7B-beta recipe (the defaults): β 0.01, η 0.005.
    static RPOOptions paper() { return RPOOptions{}; }
    /// The authors' Zephyr-7B-gemma recipe: β 0.05, η 0.005.
    static RPOOptions zephyr_gemma() {
        RPOOptions o;
        o.dpo.beta = 0.05;
        return o;
    }
};

namespace detail {

/// The authors' trainer: `if self.eta < 1e-6: self.eta = 0`.
inline double effective_eta(double eta) { return eta < 1e-6 ? 0.0 : eta; }

}  // namespace detail

/// RPO: the DPO-family loss of `opts.dpo` minus η·β times the mean summed chosen log-prob (see
/// the file comment); gradient w.r.t. the policy log-probs as a `[2, B]` matrix (row 0 chosen,
/// row 1 rejected); TRL's metrics. `lengths`: for the `ipo` / `sigmoid_norm` loss types.
template <class D1, class D2, class D3, class D4>
Result<::rlpo::detail::scalar_t<D1>> rpo_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps,
    const Eigen::MatrixBase<D3>& ref_chosen_logps, const Eigen::MatrixBase<D4>& ref_rejected_logps,
    const RPOOptions& opts = {}, const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {},
    const std::optional<CompletionLengths>& lengths = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<D1>;
    constexpr const char* fn = "preference::rpo_loss";
    // every check under this function's name first; then the DPO part runs on doubles
    const detail::FourLogps four = detail::read_four(fn, policy_chosen_logps, policy_rejected_logps,
                                                     ref_chosen_logps, ref_rejected_logps);
    const Index B = four.B;
    const std::vector<double>&pc = four.pc, &pr = four.pr, &rc = four.rc, &rr = four.rr;
    (void)detail::read_lengths(fn, lengths, B);
    ::rlpo::detail::check_nonnegative(fn, "eta", opts.eta);
    detail::validate(fn, opts.dpo, lengths.has_value(), false);

    using MapV = Eigen::Map<const Eigen::VectorXd>;
    const MapV mpc(pc.data(), B), mpr(pr.data(), B), mrc(rc.data(), B), mrr(rr.data(), B);
    const bool want_grad = out.mode != GradMode::None;
    const Result<double> dpo =
        dpo_loss(mpc, mpr, mrc, mrr, opts.dpo,
                 want_grad ? GradientOut<double>{} : ::rlpo::no_grad<double>(), lengths);

    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, 2, B);
    const double n = opts.dpo.num_pairs ? *opts.dpo.num_pairs : static_cast<double>(B);
    const double w = detail::effective_eta(opts.eta) * opts.dpo.beta;  // η'·β
    double sum_pc = 0.0;
    for (double x : pc) sum_pc += x;
    const double value = dpo.value - (B > 0 ? w * sum_pc / n : 0.0);
    if (g.active())
        for (Index i = 0; i < B; ++i) {
            detail::put_finite(fn, g, 0, i, dpo.grad(0, i) - w / n);
            detail::put_finite(fn, g, 1, i, dpo.grad(1, i));
        }
    res.value = g.coef() * value;
    res.metrics = dpo.metrics;
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
