#pragma once
/// \file
/// GMPO: geometric-mean policy optimisation — the arithmetic mean of token ratios replaced by
/// their geometric mean, clipped per token in log space.
///
/// Per row i with |y_i| = Σ_t m_it > 0, lr_it = logp_it − old_logp_it (not clamped) and
/// σ_it = sign(A_it):
///
///     lr̃_it   = σ_it · min(σ_it·lr_it, σ_it·clamp(lr_it, −ε_l, ε_h))
///               (A > 0: only large ratios are clipped; A < 0: only small ones; A = 0: 0)
///     ρ_i     = exp(Σ_t m_it·lr̃_it / |y_i|)               (geometric mean of the clipped ratios)
///     Ā_i     = Σ_t m_it·A_it / |y_i|
///     L_i     = −Ā_i · ρ_i                                 (times the row weight w_i below)
///
/// L_i is a sequence loss; it enters the aggregation as if broadcast to the row's tokens, so the
/// value is Σ_i c_i·|y_i|·w_i·L_i (seq-mean-token-mean gives Σ_i L_i / N_seq, the paper's mean).
/// Optional token weights are combined per row by their geometric mean
/// w_i = exp(Σ_t m_it·log w_it / |y_i|), as verl combines rollout IS weights for geo_mean.
///
/// **Gradient** w.r.t. `logp`: ∂/∂logp_it = −c_i·w_i·Ā_i·ρ_i·m_it·∂lr̃_it/∂lr_it, where the last
/// factor is 1 inside the clip range and on the unclipped side, 0 on the clipped side (ties split
/// as autograd does).
///
/// **Normalizer**: verl ignores `loss_agg_mode` for geo_mean and takes the mean of L_i over all
/// B rows. The default `aggregation = SeqMeanTokenMean` gives the mean over non-empty rows (or
/// over `num_seqs` when supplied: pass `num_seqs = B` to count empty rows as verl does);
/// `std::nullopt` uses the caller's mode.
///
/// **Metrics** (means over unmasked tokens): `pg_clipfrac` — tokens with lr outside [−ε_l, ε_h]
/// and A > 0; `pg_clipfrac_lower` — the same with A < 0; `ppo_kl` — mean of −lr.
///
/// **Defaults**: Zhao et al. 2025, "Geometric-Mean Policy Optimization" (arXiv 2507.20673): clip
/// range (e^−0.4, e^0.4), i.e. ε_l = ε_h = 0.4 in log space; verl's `geo_mean` reads ε from the
/// actor's clip_ratio (`GMPOOptions::verl(ε)`). verl divides the row means by |y_i| + 1e-8:
/// with `Normalizer::verl()` (its `length_epsilon`) rlpo does too, and the row factor of
/// seq-mean-token-mean stays exactly 1 / N_seq, as verl's `torch.mean` over rows; by default the
/// division is exact. Deliberate difference: verl adds 1e-10 inside the IS weights' log; rlpo
/// takes the exact log w (relative difference ≤ 1e-10 / w).
///
/// **Range and bad input**: any finite log-probs, advantages and mask weights. ρ_i is never
/// formed where it would overflow: when −Ā_i·ρ_i (or its product with the row factor) is not
/// finite, the row's term is taken in log space, log|c_i·w_i·Ā_i·ρ_i| = mean lr̃ + log|Ā_i| +
/// log c_i|y_i| + log w_i, so a huge log-ratio with a small row factor stays exact, and a
/// clipped token's gradient is exactly 0 (a log-ratio of 5001 with A < 0 no longer gives
/// ∞·0 = NaN). Row sums Σ m·x that overflow are recomputed as weighted means term by term.
/// A row term or gradient entry that truly exceeds the double (or the storage type) range →
/// rlpo::numerical_error naming the row / position. Shapes differing from `logp`, ε_l or
/// ε_h ≤ 0 → rlpo::invalid_argument; NaN under a non-zero mask → rlpo::invalid_argument naming
/// the input; a row whose clipped log-ratios sum to NaN (+inf and −inf), or to +inf with
/// Ā_i ≠ 0 (an infinite ratio), → rlpo::invalid_argument. A −inf clipped log-ratio gives ρ_i = 0
/// (the row contributes 0). Empty rows contribute 0. The value and metrics are checked finite
/// (rlpo::numerical_error). Allocates: one row of T doubles per row (∂lr̃/∂lr).

#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <array>
#include <limits>
#include <vector>

namespace rlpo::policy {

struct GMPOOptions {
    double clip_low = 0.4;   ///< ε_l (log space): ratios below e^−ε_l are clipped when A < 0
    double clip_high = 0.4;  ///< ε_h (log space): ratios above e^ε_h are clipped when A > 0
    /// Forced aggregation (verl: a mean over rows); nullopt = the Normalizer's mode.
    std::optional<Aggregation> aggregation = Aggregation::SeqMeanTokenMean;

    /// verl `compute_policy_loss_geo_mean` with the actor's clip ratios.
    static GMPOOptions verl(double clip_low = 0.2, double clip_high = 0.2) {
        GMPOOptions o;
        o.clip_low = clip_low;
        o.clip_high = clip_high;
        return o;
    }
};

namespace detail {
inline void validate(const char* fn, const GMPOOptions& o) {
    ::rlpo::detail::check_positive(fn, "clip_low", o.clip_low);
    ::rlpo::detail::check_positive(fn, "clip_high", o.clip_high);
}

/// GMPO's entry in the shared preamble (policy/detail/driver.hpp): its name and its validation.
struct GMPORows {
    using Options = GMPOOptions;
    static constexpr const char* name = "policy::gmpo";
    static constexpr bool reads_old_logp = true;
    explicit GMPORows(const GMPOOptions& o) { validate(name, o); }
};
}  // namespace detail

/// GMPO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> gmpo(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const GMPOOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    // the shared preamble and row pass (policy/detail/driver.hpp); the row math is GMPO's own
    detail::SurrogateCall<S, detail::GMPORows> c(logp, old_logp, advantages, mask, opts, norm, out,
                                                 is_weights, false);
    const double lo = -opts.clip_low, hi = opts.clip_high;
    const Index T = c.lp.cols();
    // verl's arithmetic (Normalizer::length_epsilon): the row means divide by |y_i| + ε, and
    // under seq-mean-token-mean the row factor c_i·(|y_i| + ε) is then exactly 1 / N_seq
    const double eps = norm.length_epsilon;
    const double eps_agg =
        detail::forced_aggregation(opts).value_or(norm.mode) == Aggregation::SeqMeanTokenMean ? eps
                                                                                              : 0.0;
    // lr̃ of one unmasked token (the rare overflow path recomputes it)
    const auto clipped_lr = [&](Index i, Index t) {
        const double a = static_cast<double>(c.A(i, t));
        const double lr = static_cast<double>(c.lp(i, t)) - static_cast<double>(c.olp(i, t));
        const double sg = a > 0 ? 1.0 : (a < 0 ? -1.0 : 0.0);
        return sg == 0 ? 0.0 : sg * std::min(sg * lr, sg * std::clamp(lr, lo, hi));
    };
    // part: value term, clipped (A > 0), clipped (A < 0), −log-ratio sums
    const auto sum = c.template rows<4>([&](Index i, std::array<double, 4>& part) {
        const double len = c.w.len[static_cast<std::size_t>(i)];
        std::vector<double> dlr(static_cast<std::size_t>(T), 0.0);  // ∂lr̃/∂lr per token
        double sum_lr = 0.0, sum_a = 0.0, sum_logw = 0.0, clip_hi = 0.0, clip_lo = 0.0,
               neg_kl = 0.0;
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(c.m(i, t));
            if (mk == 0) continue;
            const double a = static_cast<double>(c.A(i, t));
            const double lr = c.log_ratio(i, t);
            const double lrc = std::clamp(lr, lo, hi);
            const double gc = (lr >= lo && lr <= hi) ? 1.0 : 0.0;
            const double sg = a > 0 ? 1.0 : (a < 0 ? -1.0 : 0.0);
            double v = 0.0, gv = 0.0;
            if (sg != 0) {
                const ::rlpo::detail::LossGrad mn = detail::tie_min(sg * lr, sg, sg * lrc, sg * gc);
                v = sg * mn.loss;
                gv = sg * mn.grad;
            }
            dlr[static_cast<std::size_t>(t)] = gv;
            sum_lr += mk * v;
            sum_a += mk * a;
            if (is_weights) sum_logw += mk * std::log(static_cast<double>((*is_weights)(i, t)));
            const bool clipped = lr != lrc;
            clip_hi += (clipped && a > 0) ? mk : 0.0;
            clip_lo += (clipped && a < 0) ? mk : 0.0;
            neg_kl -= mk * lr;
        }
        if (std::isnan(sum_lr))
            ::rlpo::detail::fail(
                c.fn, "inputs of row ", i,
                " give an undefined (NaN) clipped log-ratio sum (+inf and -inf log-ratios)");
        const double len_e = len + eps;
        double mean_lr = sum_lr / len_e, abar = sum_a / len_e;
        if (!std::isfinite(sum_lr) || !std::isfinite(sum_a)) {
            // Σ m·x overflowed (huge mask weights or inputs): the weighted means term by term
            // (rare path; an infinite clipped log-ratio keeps its infinite mean)
            mean_lr = 0.0;
            abar = 0.0;
            for (Index t = 0; t < T; ++t) {
                const double mk = static_cast<double>(c.m(i, t));
                if (mk == 0) continue;
                const double q = mk / len_e;
                mean_lr += q * clipped_lr(i, t);
                abar += q * static_cast<double>(c.A(i, t));
            }
            if (std::isnan(mean_lr) || std::isnan(abar))
                ::rlpo::detail::fail_numerical(c.fn, "row ", i,
                                               ": the mean advantage or log-ratio overflows");
        }
        if (mean_lr == std::numeric_limits<double>::infinity() && abar != 0)
            ::rlpo::detail::fail(c.fn, "inputs of row ", i,
                                 " give an infinite geometric-mean ratio (a +inf clipped "
                                 "log-ratio on the unclipped side; see the non-finite policy)");
        const double ri = c.w.c[static_cast<std::size_t>(i)] * (len + eps_agg);
        const double rho = std::exp(mean_lr);
        const double wrow = is_weights ? std::exp(sum_logw / len_e) : 1.0;
        double term = ri * wrow * (-abar * rho);
        double coef = -ri * wrow * abar * rho / len_e;  // ∂term/∂lr̃_it per unit m_it
        if (!std::isfinite(term) || !std::isfinite(coef)) {
            // ρ_i (or Ā_i·ρ_i) overflows where the row's term need not (c_i·w_i small): the
            // magnitude in log space; a clipped token's gradient stays exactly 0 (never ∞·0)
            const double sgn = abar > 0 ? -1.0 : 1.0;  // sign of −Ā_i
            const double log_mag = ri == 0 || wrow == 0 || abar == 0
                                       ? -std::numeric_limits<double>::infinity()
                                       : mean_lr + std::log(std::abs(abar)) + std::log(ri) +
                                             (is_weights ? sum_logw / len_e : 0.0);
            term = sgn * std::exp(log_mag);
            coef = sgn * std::exp(log_mag - std::log(len_e));
            if (!std::isfinite(term))
                ::rlpo::detail::fail_numerical(
                    c.fn, "row ", i, ": the loss term -A_bar*rho overflows (log-magnitude ",
                    log_mag, "; geometric-mean log-ratio ", mean_lr, ")");
        }
        part = {term, clip_hi, clip_lo, neg_kl};
        c.put_row(i, [&](Index t, double mk) {
            const double d = dlr[static_cast<std::size_t>(t)];
            return d == 0 ? 0.0 : coef * mk * d;
        });
    });
    c.res.metrics.add("pg_clipfrac", sum[1], c.w.local_tokens);
    c.res.metrics.add("pg_clipfrac_lower", sum[2], c.w.local_tokens);
    c.res.metrics.add("ppo_kl", sum[3], c.w.local_tokens);
    return c.finish(sum[0]);
}

}  // namespace rlpo::policy
