#pragma once
/// \file
/// GSPO: group sequence policy optimisation — PPO clipping on a length-normalised sequence ratio.
///
/// Per row i with |y_i| = Σ_t m_it > 0 and lr_it = logp_it − old_logp_it:
///
///     log s_i = min(Σ_t m_it·lr_it / |y_i|, K)          (K = 10: verl's cap; +inf disables)
///     s_i     = exp(log s_i)
///
/// and per unmasked token, with ŝ the ratio of the chosen level:
///
///     l_it = max(−A_it·ŝ, −A_it·clip(ŝ, 1 − ε_l, 1 + ε_h))    (times the optional weight w_it)
///
/// * **Token level** (GSPO-token, verl's `gspo`): ŝ_it = sg(s_i)·π_θ(y_it)/sg(π_θ(y_it)), i.e.
///   log ŝ_it = logp_it − sg(logp_it) + sg(log s_i). Its value equals s_i; its gradient flows
///   only through the token's own log-prob: ∂ŝ_it/∂logp_it = s_i (0 when the cap K is active).
/// * **Sequence level** (the paper's GSPO, TRL's `importance_sampling_level="sequence"`):
///   ŝ_it = s_i with its full gradient ∂s_i/∂logp_it' = s_i·m_it'/|y_i|, so every token of the
///   row receives Σ_t c_i·m_it·w_it·∂l_it/∂s_i · s_i/|y_i|.
///
/// With an advantage constant over each row (GRPO), the two levels give the same value and the
/// same gradient under every aggregation mode; they differ when A varies within a row.
///
/// **Normalizer**: verl aggregates GSPO seq-mean-token-mean whatever `loss_agg_mode` says; by
/// default (`aggregation = SeqMeanTokenMean`) rlpo does the same, replacing the Normalizer's mode
/// but keeping its global counts (`num_seqs`), so micro-batches still add up. Set
/// `aggregation = std::nullopt` to aggregate under the caller's mode (TRL: its `loss_type`).
///
/// **Metrics** (means over unmasked tokens, unweighted): `pg_clipfrac` (fraction with the
/// clipped branch strictly larger), `pg_clipfrac_lower` (0, as verl), `ppo_kl` (mean of −lr,
/// unclamped, as verl's gspo logs it).
///
/// **Defaults**: Zheng et al. 2025, "Group Sequence Policy Optimization" (arXiv 2507.18071):
/// ε_l = 3e-4, ε_h = 4e-4, sequence-level ratio; `GSPOOptions::verl()` is the token form with the
/// cap K = 10 and seq-mean-token-mean (ε comes from the actor's clip_ratio_low/high: set them);
/// `GSPOOptions::trl()` is the sequence level, no cap, caller's aggregation, with ε 3e-4/4e-4:
/// the values TRL's docs give for GSPO (docs/source/paper_index.md, GSPO section); a TRL config
/// that leaves GRPOConfig's `epsilon` (0.2) and `epsilon_high` (= epsilon) unset is
/// `GSPOOptions::trl(0.2, 0.2)`. TRL reaches it from its PPO-clip loss types with
/// `importance_sampling_level="sequence"` (`make_policy_loss(name, Anchor::TRL,
/// ImportanceSampling::Sequence)`). Deliberate
/// difference: where a log-prob is −inf, verl's token form computes −inf − (−inf) = NaN; rlpo
/// uses the value s_i = 0 and a zero gradient for that row.
///
/// **Bad input**: shapes differing from `logp`, ε_l, ε_h ≤ 0, K ≤ 0 → rlpo::invalid_argument;
/// NaN under a non-zero mask → rlpo::invalid_argument naming the input; a row whose log-ratio is
/// undefined (both log-probs −inf at one token, or +inf and −inf log-ratios in one row) is
/// reported. A row sum Σ m·lr that overflows is redone as a weighted mean; a per-token loss or
/// gradient that is not finite (s_i = e^{log s_i} overflowing without a cap K, huge advantages)
/// → rlpo::invalid_argument listing the inputs at that position; a gradient entry beyond the
/// storage type, or a value / metric sum that overflows → rlpo::numerical_error. Empty rows
/// contribute 0; an empty mask gives value 0, gradient 0, metrics 0. Allocates: one row of T
/// doubles per row.

#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <array>
#include <limits>
#include <vector>

namespace rlpo::policy {

enum class GSPOLevel { Token, Sequence };

struct GSPOOptions {
    double clip_low = 3e-4;   ///< ε_l
    double clip_high = 4e-4;  ///< ε_h
    GSPOLevel level = GSPOLevel::Sequence;
    /// K: upper cap on log s_i (verl: 10); +inf disables it.
    double log_ratio_cap = 10.0;
    /// Forced aggregation mode (verl: seq-mean-token-mean); nullopt = the Normalizer's mode.
    std::optional<Aggregation> aggregation = Aggregation::SeqMeanTokenMean;

    /// verl `compute_policy_loss_gspo`: token level, cap 10, seq-mean-token-mean.
    static GSPOOptions verl(double clip_low = 3e-4, double clip_high = 4e-4) {
        GSPOOptions o;
        o.clip_low = clip_low;
        o.clip_high = clip_high;
        o.level = GSPOLevel::Token;
        return o;
    }
    /// TRL GRPOTrainer with importance_sampling_level="sequence": no cap, loss_type aggregation.
    static GSPOOptions trl(double clip_low = 3e-4, double clip_high = 4e-4) {
        GSPOOptions o;
        o.clip_low = clip_low;
        o.clip_high = clip_high;
        o.level = GSPOLevel::Sequence;
        o.log_ratio_cap = std::numeric_limits<double>::infinity();
        o.aggregation = std::nullopt;
        return o;
    }
};

namespace detail {
inline void validate(const char* fn, const GSPOOptions& o) {
    ::rlpo::detail::check_positive(fn, "clip_low", o.clip_low);
    ::rlpo::detail::check_positive(fn, "clip_high", o.clip_high);
    check_clamp(fn, "log_ratio_cap", o.log_ratio_cap);
}

/// GSPO's entry in the shared preamble (policy/detail/driver.hpp): its name and its validation.
struct GSPORows {
    using Options = GSPOOptions;
    static constexpr const char* name = "policy::gspo";
    static constexpr bool reads_old_logp = true;
    explicit GSPORows(const GSPOOptions& o) { validate(name, o); }
};

/// GSPO's row pass after the shared preamble (policy/detail/driver.hpp). `Entry` names the
/// caller and validates its options `opts` (whose `aggregation`, if any, is forced); `math`
/// holds the clip range, cap and level the pass computes with. Shared by GSPO variants that
/// differ only in their options and aggregation (LUSPO).
template <class Entry, class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> gspo_rows(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const typename Entry::Options& opts, const GSPOOptions& math, const Normalizer& norm,
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out,
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights) {
    using S = ::rlpo::detail::scalar_t<DL>;
    SurrogateCall<S, Entry> c(logp, old_logp, advantages, mask, opts, norm, out, is_weights, false);
    const double lo = 1.0 - math.clip_low, hi = 1.0 + math.clip_high, K = math.log_ratio_cap;
    const bool token_level = math.level == GSPOLevel::Token;
    const Index T = c.lp.cols();
    // part: value term, clipped tokens, −log-ratio sums
    const auto sum = c.template rows<3>([&](Index i, std::array<double, 3>& part) {
        const double len = c.w.len[static_cast<std::size_t>(i)];
        double sum_lr = 0.0, neg_kl = 0.0, clipped = 0.0;
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(c.m(i, t));
            if (mk == 0) continue;
            const double lr = c.log_ratio(i, t);
            sum_lr += mk * lr;
            neg_kl -= mk * lr;
        }
        if (std::isnan(sum_lr))
            ::rlpo::detail::fail(
                c.fn, "inputs of row ", i,
                " give an undefined (NaN) sequence log-ratio (+inf and -inf log-ratios)");
        double log_s_raw = sum_lr / len;
        if (!std::isfinite(sum_lr)) {
            // Σ m·lr overflowed (huge weights or log-ratios): the weighted mean term by term (a
            // rare path; an infinite log-ratio keeps its infinite mean)
            log_s_raw = 0.0;
            for (Index t = 0; t < T; ++t) {
                const double mk = static_cast<double>(c.m(i, t));
                if (mk == 0) continue;
                log_s_raw +=
                    mk / len * (static_cast<double>(c.lp(i, t)) - static_cast<double>(c.olp(i, t)));
            }
        }
        const double log_s = std::min(log_s_raw, K);
        const double s = std::exp(log_s);
        const double ds = log_s_raw > K ? 0.0 : s;  // ∂s/∂(log s), 0 beyond the cap
        const double sc = std::clamp(s, lo, hi);
        const bool in_range = s >= lo && s <= hi;
        const double ci = c.w.c[static_cast<std::size_t>(i)];
        std::vector<double> dl(static_cast<std::size_t>(T), 0.0);  // c·m·w·∂l_it/∂(log ŝ)
        double row = 0.0, G = 0.0;
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(c.m(i, t));
            if (mk == 0) continue;
            const double a = static_cast<double>(c.A(i, t));
            const double l1 = -a * s, g1 = -a * ds;
            const double l2 = -a * sc, g2 = in_range ? g1 : 0.0;
            const ::rlpo::detail::LossGrad lg = tie_max(l1, g1, l2, g2);
            if (!(std::isfinite(lg.loss) && std::isfinite(lg.grad)))
                ::rlpo::detail::fail_nan_at<S>(
                    c.fn, i, t, {{"logp", &c.lp}, {"old_logp", &c.olp}, {"advantages", &c.A}});
            const double wt = c.weight_at(i, t);
            clipped += l2 > l1 ? mk : 0.0;
            row += mk * wt * lg.loss;
            dl[static_cast<std::size_t>(t)] = ci * mk * wt * lg.grad;
            G += dl[static_cast<std::size_t>(t)];
        }
        part = {ci * row, clipped, neg_kl};
        c.put_row(i, [&](Index t, double mk) {
            return token_level ? dl[static_cast<std::size_t>(t)] : G * mk / len;
        });
    });
    c.res.metrics.add("pg_clipfrac", sum[1], c.w.local_tokens);
    c.res.metrics.add("pg_clipfrac_lower", 0.0, c.w.local_tokens);
    c.res.metrics.add("ppo_kl", sum[2], c.w.local_tokens);
    return c.finish(sum[0]);
}
}  // namespace detail

/// GSPO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> gspo(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const GSPOOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    return detail::gspo_rows<detail::GSPORows>(logp, old_logp, advantages, mask, opts, opts, norm,
                                               out, is_weights);
}

}  // namespace rlpo::policy
