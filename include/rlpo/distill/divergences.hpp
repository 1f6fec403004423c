#pragma once
/// \file
/// Distillation divergences between a teacher and a student over the vocabulary, one fused
/// kernel per divergence, with the gradient w.r.t. the student logits.
///
/// Per token row n of `[N, V]` logits, with temperature τ, student q = softmax(z/τ) and
/// teacher p = softmax(y/τ):
///
/// | `Divergence`      | L_n                                              | ∂L_n/∂z_j                          |
/// |-------------------|--------------------------------------------------|------------------------------------|
/// | `ForwardKL`       | KL(p‖q) = Σ p (log p − log q)                    | (q_j − p_j)/τ                      |
/// | `ReverseKL`       | KL(q‖p) = Σ q (log q − log p)                    | q_j (log q_j − log p_j − L)/τ      |
/// | `JSD` (β)         | β KL(p‖M) + (1−β) KL(q‖M), M = βp + (1−β)q       | (1−β) q_j (log(q_j/M_j) − KL(q‖M))/τ |
/// | `SkewKL` (α)      | KL(p‖αp + (1−α)q)                                | q_j (g_j − Σ q g)/τ, g = −(1−α)p/m |
/// | `SkewReverseKL`(α)| KL(q‖(1−α)p + αq)                                | q_j (g_j − Σ q g)/τ, g = log(q/m) + 1 − αq/m |
/// | `TVD`             | ½ Σ |p − q|                                      | q_j (g_j − Σ q g)/τ, g = ½ sign(q − p) |
/// | `ChiSquared`      | χ²(q‖p) = Σ q²/p − 1 = Σ q (q/p − 1)             | q_j (g_j − Σ q g)/τ, g = 2 (q/p − 1) |
///
/// (The JSD gradient uses ∂JSD/∂q_j = (1−β) log(q_j/M_j): the β-terms cancel.) The loss is
/// Σ_n c m_n L_n: rows are token rows of sequences given by a `[B, T]` row mask with B·T = N
/// (row n is sequence n / T, position n % T; m_n = 0 — padding or `ignore_index` — excludes
/// the row: never read, gradient exactly 0), aggregated by a `Normalizer` exactly as token
/// losses are (core/aggregation.hpp), so the five modes, the external (global) counts and
/// micro-batch invariance carry over. Callers with flat rows pass an `[N, 1]` mask (each row
/// its own sequence) or use the overload without a mask (all rows, token-mean).
/// `mask_from_labels(labels, ignore_index)` builds the mask from `[B, T]` labels.
///
/// **Conventions.** JSD follows TRL's `generalized_jsd_loss` / Liger's JSD: β = 0 is exactly
/// forward KL(p‖q) and β = 1 exactly reverse KL(q‖p) (special-cased, as there: the mixture
/// formula would give 0 at both ends); default β = 0.5. Skew KL / skew reverse KL are
/// DistiLLM's (Ko et al., ICML 2024), α = 0.1 (α = 0 runs as the plain KL, m = q resp. p,
/// whose gradient stays finite where m underflows); DistiLLM's code evaluates the skew forward KL
/// as the cross-entropy −Σ p log m, which differs from KL(p‖m) by the teacher entropy (a
/// constant: same gradient); rlpo returns the divergence, so D(p, p) = 0. Temperature divides
/// both logit rows; `temperature_squared` multiplies value and gradient by τ² (Hinton et al.
/// 2015), off by default as in TRL GKD and Liger (`DistillOptions::hinton()` turns it on).
/// The gradient is w.r.t. the raw student logits z (the 1/τ is included).
///
/// **Speed.** One fused, pipelined sweep per L1-sized chunk over several rows at once
/// (divergence/detail/driver.hpp describes the pipeline, divergence/detail/fused_chunk.hpp its stages);
/// arithmetic in float (double for double logits), results identical for any thread count.
///
/// **Metrics**: the divergence's name (`forward_kl`, `reverse_kl`, `jsd`, `skew_kl`,
/// `skew_reverse_kl`, `tvd`, `chi2`) = mean of L_n (τ²-scaled when on) over unmasked rows,
/// mask-weighted.
///
/// **Range.** Every finite logit is accepted, float or double, and τ from 1e−4
/// (`kMinTemperature`; smaller τ is rejected: the softmax is one-hot for ordinary logit gaps
/// and the gradients' rounding, about ε·(Δz/τ)/τ, exceeds them) to any finite value (rows
/// tend to uniform). Rows with |logit/τ| ≤ 2^20 for every logit (student and teacher, the
/// least as well as the largest) run the fast path, whose values stay within
/// about 1e−5 relative (float) / 1e−10 (double) of the exact ones; rows beyond (offsets up to
/// the float / double maximum, tested from 1e0 to 1e30) and JSD rows where the student lies
/// far below the teacher (KL(p‖q) ≫ the JSD, where the fast path's KL(p‖q) + Σ p r would
/// cancel) take the exact path, which works on logits shifted by their row maxima. Values are
/// ≥ 0 up to rounding. `[N, 0]` logits (N > 0) are rejected ("logits: V = 0"); `[0, V]` is an
/// empty batch (value 0, metrics 0). The value and metrics are checked finite at the end
/// (rlpo::numerical_error otherwise).
///
/// **Bad input** (rlpo::invalid_argument): teacher shape ≠ student shape; V = 0 with rows;
/// mask not `[B, T]` with B·T = N, or with negative / non-finite entries; τ < 1e−4 or not
/// finite; β or α outside [0, 1]; in a row
/// under a non-zero mask: a NaN or +inf logit (named with its position), a row of only −inf
/// (no distribution), or an infinite divergence (e.g. forward KL where the student logit is
/// −inf and the teacher has mass; χ² where the teacher has none and the student has). −inf logits elsewhere are zero probabilities (exact 0).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/driver.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <type_traits>
#include <utility>

namespace rlpo::distill {

/// Divergence between teacher and student logits (`[N, V]`, same shape and type: float,
/// double or Eigen::bfloat16), rows selected and aggregated by the `[B, T]` row `mask`
/// (B·T = N) under `norm`. Gradient w.r.t. `student_logits`.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const DistillOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    using A = detail::acc_t<S>;
    constexpr const char* fn = "distill::divergence";
    const detail::LogitPair<DS, DT> in(fn, student_logits, teacher_logits);
    const ConstMatRef<S>&z = in.z, &y = in.y;
    const double t2 = detail::validate(fn, opts);
    const Index N = z.rows(), V = z.cols();
    detail::RowCall<S> c(fn, N, V, mask, norm, out);
    const detail::DenseRows rows = detail::dense_rows<S, A>(opts, c.plan, z, y, c.g, t2);
    const detail::PassResult pass =
        detail::combine_rows(fn, c.plan, N, rows.loss, rows.aux, rows.errs, t2);
    detail::check_risky_rows(fn, c.plan, N, V, c.g, t2);
    c.res.value = c.g.coef() * pass.value;
    c.res.metrics.add(to_string(opts.divergence), pass.metric, pass.count);
    ::rlpo::detail::check_finite_result(fn, c.res.value, c.res.metrics);
    return std::move(c.res);
}

/// All rows, token-mean (no mask).
template <class DS, class DT>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const DistillOptions& opts = {}, const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    const Mat<float> ones = Mat<float>::Ones(student_logits.rows(), 1);
    return divergence(student_logits, teacher_logits, ones, opts, Normalizer{}, out);
}

#define RLPO_DISTILL_NAMED(NAME, KIND)                                                            \
    template <class DS, class DT, class DM>                                                       \
    Result<::rlpo::detail::scalar_t<DS>> NAME(                                                    \
        const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits, \
        const Eigen::MatrixBase<DM>& mask, DistillOptions opts = {}, const Normalizer& norm = {}, \
        const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {                              \
        opts.divergence = KIND;                                                                   \
        return divergence(student_logits, teacher_logits, mask, opts, norm, out);                 \
    }

/// Named shorthands: `forward_kl(z, y, mask, opts, norm, out)` = divergence with that kind.
RLPO_DISTILL_NAMED(forward_kl, Divergence::ForwardKL)
RLPO_DISTILL_NAMED(reverse_kl, Divergence::ReverseKL)
RLPO_DISTILL_NAMED(jsd, Divergence::JSD)
RLPO_DISTILL_NAMED(skew_kl, Divergence::SkewKL)
RLPO_DISTILL_NAMED(skew_reverse_kl, Divergence::SkewReverseKL)
RLPO_DISTILL_NAMED(tvd, Divergence::TVD)
RLPO_DISTILL_NAMED(chi2, Divergence::ChiSquared)
#undef RLPO_DISTILL_NAMED

}  // namespace rlpo::distill
