#pragma once
/// \file
/// Entropy bonus over the policy's logits.
///
/// The logits of every response position are rows of a `[B·T, V]` row-major matrix (row
/// i·T + t is position t of sequence i, the layout of a `[B, T, V]` tensor), the mask is `[B, T]`:
///
///     H_it = logsumexp(z_it) − Σ_j softmax(z_it)_j · z_it,j
///     value = agg(H)            (the aggregated entropy, e.g. its token mean)
///
/// **Gradient** w.r.t. the logits: ∂H/∂z_j = −p_j·(z_j − Σ_k p_k z_k) per row, times the
/// aggregation weight c_i·m_it; rows of masked positions are never read and get gradient 0.
/// The value is the entropy itself (a quantity to maximise): trainers minimise
/// loss − β·H, so pass `rlpo::add_to(grad_logits, −β)` (the coefficient also scales the value).
///
/// **Metrics**: `entropy` (mean per-token entropy over unmasked positions, verl's
/// `actor/entropy`).
///
/// **Defaults**: the coefficient β = `entropy_coeff` is 0 in verl (and in TRL unless set); the
/// aggregation is the policy loss's (verl's `compute_entropy_loss` uses `loss_agg_mode`).
///
/// **Bad input**: logits rows ≠ B·T → rlpo::invalid_argument; a NaN or +inf logit in an
/// unmasked row → rlpo::invalid_argument naming the row (−inf logits are zero-probability
/// entries and accepted; a row of only −inf has entropy 0); V = 0 with rows → invalid_argument
/// ("logits: V = 0"). An empty mask gives value 0.
///
/// **Range.** Every finite logit is accepted (float or double, up to ±max): the entropy is
/// computed from the logits shifted by their row maximum, H = log Σ e^(z−m) − Σ p (z − m), so
/// it depends on the logits' differences only (shift invariant: two tied logits at 1e17 give
/// log 2, not −1e17). Differences beyond the double range (a row holding both −1e308 and
/// 1e308) make those entries zero probabilities, as their true weight e^(−2e308) is.
///
/// **Allocates**: the per-sequence partial sums and row weights (B entries each) and the
/// gradient when owned (`Result::grad`); nothing proportional to V. Float logits are widened
/// to double entry by entry.

#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/policy/detail/common.hpp>

#include <array>
#include <limits>
#include <vector>

namespace rlpo::regularizers {

/// Aggregated entropy of the softmax of each unmasked row and its gradient w.r.t. `logits`.
template <class DZ, class DM>
Result<::rlpo::detail::scalar_t<DZ>> entropy_bonus(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DM>& mask,
    const Normalizer& norm = {}, const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "regularizers::entropy_bonus";
    const ConstMatRef<S> z(logits.derived()), m(mask.derived());
    const Index B = m.rows(), T = m.cols(), V = z.cols();
    RLPO_CHECK(z.rows() == B * T, fn, "logits: expected ", B * T, " rows (B·T of mask [", B, ", ",
               T, "]), given ", z.rows());
    RLPO_CHECK(V > 0 || z.rows() == 0, fn, "logits: V = 0 (no vocabulary entries) in [", z.rows(),
               ", ", V, "]: a distribution needs at least one entry");
    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, z.rows(), V);
    // Rows are evaluated in double (float logits are widened entry by entry), so that float
    // inputs get the entropy and gradient of the exact softmax of the given values. Every
    // logit enters shifted by its row maximum m (H = log Σ e^(z−m) − Σ p (z − m)), so the
    // entropy depends on the differences of the logits only: no cancellation of lse(z)
    // against Σ p z at large offsets. Three streaming passes per row (the maximum and the
    // checks; the sums; the gradient), no scratch. Sequences run in parallel (OpenMP) with
    // per-sequence partial sums combined in order; a sequence's error is captured and the
    // first one in order rethrown after the loop.
    const auto sum = ::rlpo::detail::ordered_row_sums<2>(
        B, B * T * V > 262144, [&](Index i, std::array<double, 2>& part) {
            const double ci = w.c[static_cast<std::size_t>(i)];
            constexpr double ninf = -std::numeric_limits<double>::infinity();
            double value = 0, hsum = 0;
            Index risky_row = -1;  // an overflowing row, reported after the sequence's input
            double risky_f = 0;    // errors (an invalid_argument outranks a numerical_error)
            for (Index t = 0; t < T; ++t) {
                const Index row = i * T + t;
                const double mk = static_cast<double>(m(i, t));
                if (mk == 0) {
                    for (Index j = 0; j < V; ++j) g.zero(row, j);
                    continue;
                }
                const S* zr = z.row(row).data();
                double mx = ninf;
                bool bad = false;
                for (Index j = 0; j < V; ++j) {
                    const double x = static_cast<double>(zr[j]);
                    bad |= !(x < std::numeric_limits<double>::infinity());  // NaN or +inf
                    mx = x > mx ? x : mx;
                }
                if (bad)
                    for (Index j = 0; j < V; ++j) {
                        const double x = static_cast<double>(zr[j]);
                        if (!(x < std::numeric_limits<double>::infinity()))
                            ::rlpo::detail::fail(fn, "logits: ", x, " at [", row, ", ", j,
                                                 "] in an unmasked row (NaN and +inf are "
                                                 "rejected)");
                    }
                double h = 0;
                if (mx == ninf) {  // a row of only −inf: entropy 0, gradient 0
                    for (Index j = 0; j < V; ++j) g.zero(row, j);
                } else {
                    // s = Σ e^d, sd = Σ e^d d with d = z − m ≤ 0 (e^d = 0 at −inf)
                    double se = 0, sd = 0;
                    for (Index j = 0; j < V; ++j) {
                        const double d = static_cast<double>(zr[j]) - mx;
                        if (d == ninf) continue;
                        const double e = std::exp(d);
                        se += e;
                        sd += e * d;
                    }
                    const double pd = sd / se;  // Σ p (z − m) ≤ 0
                    h = std::log(se) - pd;
                    if (g.active()) {
                        // ∂H/∂z_j = −p_j ((z_j − m) − Σ p (z − m)), times c·m
                        const double k = -ci * mk / se;
                        for (Index j = 0; j < V; ++j) {
                            const double d = static_cast<double>(zr[j]) - mx;
                            g.put(row, j, d == ninf ? 0.0 : k * std::exp(d) * (d - pd));
                        }
                        const double f = g.coef() * ci * mk;
                        if (risky_row < 0 && g.factor_at_risk(f) &&
                            g.first_nonfinite(row, V) >= 0) {
                            risky_row = row;
                            risky_f = f;
                        }
                    }
                }
                value += ci * mk * h;
                hsum += mk * h;
            }
            if (risky_row >= 0) g.check_row_finite(fn, risky_row, V, risky_f);
            part = {value, hsum};
        });
    res.value = g.coef() * sum[0];
    res.metrics.add("entropy", sum[1], w.local_tokens);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::regularizers
