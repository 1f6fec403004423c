#pragma once
/// \file
/// A training step that starts from the model's logits and the sampled tokens (GRPO / PPO
/// from the raw output of the forward pass), composed from `logits::token_logps` and
/// `TrainingStep`:
///
///     logp           = log softmax(logits / τ)[labels]          (token_logps: one read)
///     step           = TrainingStep on logp, with the same logits for its entropy /
///                      distillation terms
///     ∂loss/∂logits  = the step's own logits gradient (entropy, distillation)
///                      + (1/τ)(onehot − softmax) · ∂loss/∂logp   (token_logps_backward: one
///                      read of the logits, added in place into the same buffer)
///
/// `in.logits` (`[B·T, V]`) must be set and `in.logp` unset: it is bound to the forward's
/// log-probs, which the result keeps (`logp`; `in.logp` stays valid while the result lives).
/// `grad_logits` is the full gradient w.r.t. the logits, `grad_logp` the gradient w.r.t. the
/// log-probs. The temperature divides the logits for the log-probs only; the step's entropy
/// term still sees the logits as given. Memory: the log-softmax adds no `[N, V]` temporary.
///
/// **Bad input** (`rlpo::invalid_argument`): `in.logp` already set or `in.logits` missing
/// ("rlpo::train::step_from_logits(): …"), and the errors of `token_logps` (labels outside
/// [0, V) under the mask, NaN / +inf logits, temperature ≤ 0, …) and of the step.

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/logits/token_logps.hpp>
#include <rlpo/train/step.hpp>

#include <utility>

namespace rlpo::train {

/// The step's result and the log-probs it was computed from.
template <class S>
struct LogitsStepResult : StepResult<S> {
    Mat<S> logp;  ///< [B, T] log softmax(logits/τ)[labels] (0 where the mask is 0)
};

/// One (micro-)batch of `step` from logits and labels (`[B, T]`, integers); see the file
/// comment.
template <class S, class DL>
LogitsStepResult<S> step_from_logits(const TrainingStep<S>& step, StepInputs<S>& in,
                                     const Eigen::MatrixBase<DL>& labels,
                                     double temperature = 1.0) {
    constexpr const char* fn = "train::step_from_logits";
    RLPO_CHECK(!in.logp.present(), fn,
               "logp: must be unset (it is computed from the logits and the labels)");
    RLPO_CHECK(in.logits.present(), fn, "logits: required");
    RLPO_CHECK(in.mask.present(), fn, "mask: required");
    logits::TokenLogpsOptions o;
    o.temperature = temperature;
    auto fwd = logits::token_logps(*in.logits, labels, *in.mask, o);
    LogitsStepResult<S> res;
    res.logp = std::move(fwd.logp);
    in.logp = res.logp;
    StepResult<S>& base = res;
    base = step(in);
    const Index N = in.logits.rows(), V = in.logits.cols();
    const bool have = base.grad_logits.rows() == N && base.grad_logits.cols() == V;
    if (!have) base.grad_logits.resize(N, V);
    const GradientOut<S> sink = have ? add_to<S>(base.grad_logits) : write_to<S>(base.grad_logits);
    logits::token_logps_backward(*in.logits, labels, *in.mask, fwd, base.grad_logp, sink);
    return res;
}

}  // namespace rlpo::train
