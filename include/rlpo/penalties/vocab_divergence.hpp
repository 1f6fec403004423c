#pragma once
/// \file
/// Full-vocabulary divergences between the policy and a reference policy, from their logits:
/// KL(π‖π_ref), forward KL(π_ref‖π), χ²(π‖π_ref), total variation and Jensen–Shannon.
///
/// Per token row n (N rows of V logits; p = softmax(z_n / τ) the policy, q = softmax(z_ref,n / τ)
/// the reference, τ the temperature):
///
/// | `VocabDivergence` | D_n                                   | ∂D_n/∂z_n (times 1/τ)                 | metric       |
/// |-------------------|---------------------------------------|----------------------------------------|--------------|
/// | `ReverseKL`       | Σ p (log p − log q)                   | p ⊙ (log p − log q − D)                | `kl`         |
/// | `ForwardKL`       | Σ q (log q − log p)                   | p − q                                  | `forward_kl` |
/// | `ChiSquared`      | Σ q (p/q − 1)² = Σ p²/q − 1            | 2 p ⊙ (p/q − Σ p²/q)                   | `chi2`       |
/// | `TotalVariation`  | ½ Σ abs(p − q)                        | ½ p ⊙ (s − Σ p s), s = sign(p − q)     | `tv`         |
/// | `JensenShannon`   | ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2  | p ⊙ (h − Σ p h), h = ½ log(p/m)        | `js`         |
///
/// The loss is Σ_n c_n·m_n·D_n: the rows are tokens, and the mask has the token layout `[B, T]`
/// with B·T = N (row n = i·T + t, row-major), so every aggregation mode of
/// core/aggregation.hpp applies as for a token-level loss (a `[N, 1]` mask treats each row as
/// its own sequence). The gradient is w.r.t. the **policy logits** `[N, V]`; the reference is a
/// constant. Metric: the mask-weighted mean of D_n over unmasked rows, named as in the table.
///
/// **Which one to use.** KL(π‖π_ref) is the exact (zero-variance) version of what the token
/// estimators k1/k3 estimate; ∇ of the forward KL is what k3 used as a loss follows (see
/// kl_estimators.hpp). RAPO (Deng et al. 2025, "Unlocking Reasoning Capabilities in LLMs via
/// Reinforcement Learning Exploration") penalises the forward KL to a *reward-reweighted*
/// reference: pass that reference's logits as `ref_logits` with `ForwardKL` (rlpo does not build
/// the reweighting itself; see docs/penalties.md). χ² is the action-level form of the ORPO
/// regulariser (occupancy_chi2.hpp has the occupancy-measure form).
///
/// **Conventions.** Entries of −inf logits are zero probabilities and contribute 0 (0·log 0 = 0).
/// Where the divergence is infinite (KL(π‖π_ref) or χ² with p > 0 = q; forward KL with
/// q > 0 = p) the value is +inf and the gradient undefined: the call throws, naming the row.
/// Total variation at p_j = q_j uses sign(0) = 0 (as `torch.abs`' gradient).
///
/// **One implementation.** These are the dense divergences of rlpo/divergence/ (the pipeline
/// behind distill::divergence), run with the policy as the *student* (the input the gradient is
/// for) and the reference as the *teacher*. Note the swapped letters: here p is the policy and
/// q the reference; in distill/ q is the student (policy) and p the teacher (reference). So
///
/// | `VocabDivergence` | pipeline kind (distill::Divergence)         | same quantity            |
/// |-------------------|---------------------------------------------|--------------------------|
/// | `ReverseKL`       | `ReverseKL`: KL(q‖p) = KL(student‖teacher)  | KL(π‖π_ref)              |
/// | `ForwardKL`       | `ForwardKL`: KL(p‖q) = KL(teacher‖student)  | KL(π_ref‖π)              |
/// | `ChiSquared`      | `ChiSquared`: Σ q²/p − 1                    | Σ π²/π_ref − 1           |
/// | `TotalVariation`  | `TVD`                                       | ½ Σ abs(π − π_ref)       |
/// | `JensenShannon`   | `JSD` with β = 0.5                          | ½ KL(π‖m) + ½ KL(π_ref‖m)|
///
/// The metric names stay the penalty's (`kl`, `forward_kl`, `chi2`, `tv`, `js`). Arithmetic
/// is in double for float and double logits alike (as before the move: the pipeline widens
/// float rows), with double sums across chunks and rows; rows run in parallel, combined in row
/// order (identical for any thread count).
///
/// **Range**: every finite logit (−inf: a zero probability); τ ≥ 1e−4 and finite; rows
/// beyond |logit/τ| = 2^20 and JS rows that would cancel take the pipeline's exact path (see
/// distill/divergences.hpp, "Range"). The value and metric are checked finite at the end
/// (rlpo::numerical_error otherwise).
///
/// **Bad input**: shapes (ref_logits ≠ logits, mask entries ≠ N) → rlpo::invalid_argument;
/// V = 0 with rows ("logits: V = 0"; `[0, V]` is an empty batch) → invalid_argument;
/// τ < 1e−4 or not finite → invalid_argument; NaN or +inf logits in an unmasked row →
/// invalid_argument naming the input and [row, column]; an unmasked row with no finite logit
/// (no distribution) → invalid_argument. An empty mask gives 0, gradient 0, metric 0.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/driver.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <vector>

namespace rlpo::penalties {

enum class VocabDivergence { ReverseKL, ForwardKL, ChiSquared, TotalVariation, JensenShannon };

/// Metric name of a divergence (`kl`, `forward_kl`, `chi2`, `tv`, `js`).
inline const char* to_string(VocabDivergence d) {
    switch (d) {
        case VocabDivergence::ReverseKL: return "kl";
        case VocabDivergence::ForwardKL: return "forward_kl";
        case VocabDivergence::ChiSquared: return "chi2";
        case VocabDivergence::TotalVariation: return "tv";
        case VocabDivergence::JensenShannon: return "js";
    }
    return "?";
}

struct VocabDivergenceOptions {
    VocabDivergence divergence = VocabDivergence::ReverseKL;
    /// τ: both logit rows are divided by τ before the softmax (> 0).
    double temperature = 1.0;
};

namespace detail {

/// The pipeline's options for a penalty: the policy is the student, the reference the teacher
/// (see the table above; p and q swap their names between the two modules).
inline distill::DistillOptions pipeline_options(const VocabDivergenceOptions& o) {
    distill::DistillOptions d;
    switch (o.divergence) {
        case VocabDivergence::ReverseKL: d.divergence = distill::Divergence::ReverseKL; break;
        case VocabDivergence::ForwardKL: d.divergence = distill::Divergence::ForwardKL; break;
        case VocabDivergence::ChiSquared: d.divergence = distill::Divergence::ChiSquared; break;
        case VocabDivergence::TotalVariation: d.divergence = distill::Divergence::TVD; break;
        case VocabDivergence::JensenShannon: d.divergence = distill::Divergence::JSD; break;
    }
    d.temperature = o.temperature;
    d.beta = 0.5;
    return d;
}

/// The penalty's wording of a row error of the pipeline (arg 0: the policy `logits`, 1: the
/// reference `ref_logits`).
[[noreturn]] inline void fail_row(const char* fn, VocabDivergence d, Index n,
                                  const distill::detail::RowError& e) {
    using distill::detail::RowFault;
    const char* input = e.arg == 1 ? "ref_logits" : "logits";
    switch (e.fault) {
        case RowFault::NaN:
            ::rlpo::detail::fail(fn, input, ": NaN at [", n, ", ", e.col,
                                 "] in an unmasked row (NaN is rejected)");
        case RowFault::PosInf:
            ::rlpo::detail::fail(fn, input, ": +inf at [", n, ", ", e.col,
                                 "] in an unmasked row (the softmax is undefined)");
        case RowFault::NoDistribution:
            ::rlpo::detail::fail(fn, "logits: row ", n,
                                 " has no finite entry in logits or ref_logits (no distribution)");
        case RowFault::Infinite:
        case RowFault::Overflow:  // reported after the loop (distill::detail::report_overflows)
        case RowFault::Other: break;
    }
    ::rlpo::detail::fail(fn, to_string(d), ": row ", n,
                         " is infinite (one distribution has mass where the other has none); "
                         "its gradient is undefined");
}

}  // namespace detail

/// Full-vocabulary divergence between the policy `logits` and `ref_logits` (both `[N, V]`),
/// aggregated over the token `mask` (B·T = N entries, row n = i·T + t). Gradient w.r.t.
/// `logits`.
template <class DZ, class DR, class DM>
Result<::rlpo::detail::scalar_t<DZ>> vocab_divergence(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DR>& ref_logits,
    const Eigen::MatrixBase<DM>& mask, const VocabDivergenceOptions& opts = {},
    const Normalizer& norm = {}, const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "penalties::vocab_divergence";
    const ConstMatRef<S> z(logits.derived()), zr(ref_logits.derived());
    ::rlpo::detail::check_same_shape(fn, "ref_logits", zr, "logits", z);
    RLPO_CHECK(mask.size() == z.rows(), fn, "mask: expected ", z.rows(),
               " entries (one per row of logits, token layout [B, T] with B·T = N), given [",
               mask.rows(), ", ", mask.cols(), "]");
    distill::detail::check_temperature(fn, opts.temperature);

    Result<S> res;
    const Index N = z.rows(), V = z.cols();
    distill::detail::check_vocabulary(fn, "logits", N, V);
    const distill::detail::RowPlan plan = distill::detail::plan_rows(fn, N, mask, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    // policy = student, reference = teacher; double arithmetic for float logits too
    const distill::detail::DenseRows rows =
        distill::detail::dense_rows<S, double>(detail::pipeline_options(opts), plan, z, zr, g, 1.0);
    double value = 0.0, metric = 0.0;
    for (Index n = 0; n < N; ++n) {
        const auto r = static_cast<std::size_t>(n);
        if (rows.errs[r].set() && rows.errs[r].fault != distill::detail::RowFault::Overflow)
            detail::fail_row(fn, opts.divergence, n, rows.errs[r]);
        if (plan.m[r] == 0) continue;
        value += plan.w[r] * rows.loss[r];
        metric += plan.m[r] * rows.loss[r];
    }
    distill::detail::report_overflows(fn, rows.errs, N);
    distill::detail::check_risky_rows(fn, plan, N, V, g, 1.0);
    res.value = g.coef() * value;
    res.metrics.add(to_string(opts.divergence), metric, plan.local_rows);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::penalties
