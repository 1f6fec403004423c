#pragma once
/// \file
/// A DPO-family step that starts from the model's logits: the chosen and rejected completions'
/// token log-probs (`logits::token_logps`), their per-sequence sums, the preference loss
/// (`preference::dpo_loss`, every TRL loss type and their weighted combinations, `sft`
/// included) and the gradient back into the logits (`logits::token_logps_backward`).
///
/// Layout (TRL's concatenated batch): `labels` and `mask` are `[2B, T]`, rows 0..B−1 the chosen
/// completions and rows B..2B−1 the rejected ones of the same prompts; `logits` is `[2B·T, V]`
/// (row n = b·T + t). The reference's summed log-probs `ref_chosen`, `ref_rejected` are `[B]`.
/// With logp = log softmax(logits / τ)[labels] and m the mask:
///
///     π_c,i = Σ_t m_it·logp_it (row i),   π_r,i = Σ_t m_{B+i,t}·logp_{B+i,t},   |y| = Σ_t m
///     L     = dpo_loss(π_c, π_r, ref_c, ref_r, opts, lengths = |y|)
///     ∂L/∂logp_it = m_it·∂L/∂π_i            ∂L/∂logits = token_logps_backward(∂L/∂logp)
///
/// so a DPO + SFT objective is `make_dpo_options({"sigmoid", "sft"}, {1, α})` (TRL's
/// `loss_type=["sigmoid", "sft"]`, `loss_weights`): the `sft` term is the chosen tokens' NLL
/// from the same log-probs. The completion lengths given to `dpo_loss` (for `ipo`,
/// `sigmoid_norm`, `sft`) are the mask's row sums. Memory: no `[N, V]` temporary; the logits
/// are read twice (forward, backward) and the gradient written once.
///
/// The gradient goes to `out` (`write_to`, `add_to`; default: owned by the result); its
/// coefficient scales the value too. Metrics: `dpo_loss`'s (TRL's `rewards/*`, `logps/*`).
///
/// **Bad input** (`rlpo::invalid_argument`): an odd number of mask rows, `labels` of another
/// shape than the mask, reference vectors not of size B, `logits` rows ≠ 2B·T, and every error
/// of `token_logps` and `dpo_loss`.

#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/logits/token_logps.hpp>
#include <rlpo/preference/dpo.hpp>

#include <utility>

namespace rlpo::train {

/// Result of `dpo_from_logits`.
template <class S>
struct PreferenceStepResult {
    double value = 0.0;     ///< the preference loss (times the sink's coefficient)
    Mat<S> grad_logits;     ///< ∂value/∂logits when no sink was given (`[2B·T, V]`)
    Mat<double> logp;       ///< `[2B, T]` token log-probs (0 where the mask is 0)
    Mat<double> grad_logp;  ///< `[2, B]` ∂L/∂(π_c, π_r), the sequence-level gradient
    Metrics metrics;        ///< `dpo_loss`'s
};

/// One (micro-)batch of a DPO-family loss from logits; see the file comment.
template <class DZ, class DL, class DM, class DC, class DR>
PreferenceStepResult<::rlpo::detail::scalar_t<DZ>> dpo_from_logits(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
    const Eigen::MatrixBase<DM>& mask, const Eigen::MatrixBase<DC>& ref_chosen,
    const Eigen::MatrixBase<DR>& ref_rejected, const preference::DPOOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}, double temperature = 1.0) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    constexpr const char* fn = "train::dpo_from_logits";
    const Index R = mask.rows(), T = mask.cols();
    RLPO_CHECK(R % 2 == 0, fn, "mask: expected [2B, T] (chosen rows, then rejected rows), given ",
               R, " rows");
    const Index B = R / 2;
    RLPO_CHECK(ref_chosen.size() == B && ref_rejected.size() == B, fn,
               "ref_chosen, ref_rejected: expected ", B, " entries each, given ", ref_chosen.size(),
               " and ", ref_rejected.size());
    logits::TokenLogpsOptions lo;
    lo.temperature = temperature;
    const auto fwd = logits::token_logps(logits, labels, mask, lo);  // checks shapes and labels
    PreferenceStepResult<S> res;
    res.logp = fwd.logp.template cast<double>();
    Eigen::VectorXd pc(B), pr(B);
    preference::CompletionLengths len{Eigen::VectorXd(B), Eigen::VectorXd(B)};
    for (Index i = 0; i < B; ++i) {
        double sc = 0, sr = 0, lc = 0, lr = 0;
        for (Index t = 0; t < T; ++t) {
            const double mc = static_cast<double>(mask(i, t)),
                         mr = static_cast<double>(mask(B + i, t));
            if (mc != 0) sc += mc * res.logp(i, t), lc += mc;
            if (mr != 0) sr += mr * res.logp(B + i, t), lr += mr;
        }
        pc(i) = sc, pr(i) = sr, len.chosen(i) = lc, len.rejected(i) = lr;
    }
    auto dpo = preference::dpo_loss(pc, pr, ref_chosen.template cast<double>().eval(),
                                    ref_rejected.template cast<double>().eval(), opts, {}, len);
    res.grad_logp = std::move(dpo.grad);
    res.metrics = std::move(dpo.metrics);
    ::rlpo::detail::check_finite_param(fn, "GradientOut::coef", out.coef);
    res.value = out.coef * dpo.value;
    if (out.mode == GradMode::None) return res;
    Mat<double> g = Mat<double>::Zero(R, T);  // ∂L/∂logp per token
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) {
            g(i, t) = static_cast<double>(mask(i, t)) * res.grad_logp(0, i);
            g(B + i, t) = static_cast<double>(mask(B + i, t)) * res.grad_logp(1, i);
        }
    auto back = logits::token_logps_backward(logits, labels, mask, fwd, g, out);
    if (out.mode == GradMode::Own) res.grad_logits = std::move(back.grad);
    return res;
}

}  // namespace rlpo::train
