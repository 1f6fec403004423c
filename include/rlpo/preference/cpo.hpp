#pragma once
/// \file
/// Reference-free pairwise preference losses: CPO, SimPO and AlphaPO, with TRL's `CPOTrainer`
/// semantics (`cpo_loss` + the `cpo_alpha` NLL term of `get_batch_loss_metrics`).
///
/// Inputs (`[B]` each, float or double, any Eigen vector or map): the *summed* log-probs π_c,
/// π_r of the chosen and rejected completions under the policy, and the completion lengths
/// |y_c|, |y_r| (`CompletionLengths`) where a term needs them. No reference model. Per pair, the
/// log-prob the loss reads is x = π/|y| for `ipo` and `simpo` (TRL's `average_log_prob`, |y|
/// clamped ≥ 1) and x = π otherwise; the reward is r = x, or with AlphaPO's α ≠ 0
/// r = (1 − e^{−α·x})/α (TRL: (1 − p^{−α})/α with p = e^x); m = r_c − r_r; ε =
/// `label_smoothing`, γ = `simpo_gamma`:
///
/// | loss type (TRL) | ℓ per pair                                     | paper |
/// |-----------------|------------------------------------------------|-------|
/// | `sigmoid`       | −(1−ε)·logσ(βm) − ε·logσ(−βm)                  | CPO 2401.08417 eq. 3 |
/// | `hinge`         | relu(1 − βm)                                   | SLiC 2305.10425 |
/// | `ipo`           | (m − 1/(2β))²   (averaged x)                   | IPO 2310.12036 eq. 17 |
/// | `simpo`         | −(1−ε)·logσ(βm − γ) − ε·logσ(−(βm − γ))   (averaged x) | SimPO 2405.14734 |
///
/// AlphaPO (arXiv 2501.03884) is `simpo` with α ≠ 0 and no NLL term (TRL's `loss_type="alphapo"`
/// sets exactly that; `CPOOptions::alphapo`). α applies to every loss type, as in TRL.
///
/// **Loss**: L = Σ_i ℓ_i / n + λ·NLL, n = B (TRL's `losses.mean()`) or `num_pairs`, λ =
/// `cpo_alpha`, NLL = −Σ_i π_c,i / N: TRL's cross-entropy over the chosen completion tokens
/// (a mean over all of the batch's chosen completion tokens), N = Σ_i |y_c,i| or
/// `num_nll_tokens` (the global count of a batch split into micro-batches). N = 0 (every chosen
/// completion empty) gives NLL = 0 (TRL: NaN). A caller whose NLL also covers other tokens (TRL's
/// ORPO covers the prompt) passes their count in `num_nll_tokens` and adds −(their log-prob
/// sum)/N itself.
///
/// **Gradient**: w.r.t. the summed policy log-probs only, one `[2, B]` matrix (row 0 ∂L/∂π_c,
/// row 1 ∂L/∂π_r; TRL's concatenated `[chosen; rejected]` layout, as `dpo_loss`):
/// ∂L/∂π_c,i = (∂ℓ_i/∂m)·r'(x_c)·(∂x_c/∂π_c)/n − λ/N, ∂L/∂π_r,i = −(∂ℓ_i/∂m)·r'(x_r)·(∂x_r/∂π_r)/n,
/// with r'(x) = e^{−α·x} (1 for α = 0) and ∂x/∂π = 1/|y| (averaged) or 1.
///
/// **Metrics** (TRL's names; means over the pairs): `rewards/chosen`, `rewards/rejected` (β·r),
/// `rewards/accuracies` (β·r_c > β·r_r, strictly), `rewards/margins`, `logps/chosen`,
/// `logps/rejected` (mean x: averaged for `ipo`/`simpo`, as TRL logs them), `nll_loss` (the
/// NLL, kept as (−Σπ_c, Σ|y_c|) so that micro-batches merge to the batch's token mean; without
/// lengths the NLL with count 1; 0 when λ = 0, as TRL). TRL's `logits/chosen` and
/// `logits/rejected` need the logits and are not here.
///
/// **Defaults** (TRL CPOConfig): β 0.1, ε 0, loss type `sigmoid`, λ = `cpo_alpha` 1.0, γ 0.5,
/// α 0.
///
/// **Anchor**: TRL `trl/experimental/cpo/cpo_trainer.py` (`CPOTrainer.cpo_loss`,
/// `concatenated_forward`, `get_batch_loss_metrics`) and `cpo_config.py`, main f2cd577
/// (2026-07); Liger-Kernel `chunked_loss/cpo_loss.py` and `simpo_loss.py` (the same formulas;
/// Liger's NLL is the same token mean). Decisions: `hinge` and `ipo` ignore ε (TRL warns and
/// ignores it); the AlphaPO reward is evaluated as −expm1(−α·x)/α, finite where TRL's
/// (1 − exp(x)^{−α})/α overflows because exp(x) underflows (x < −745 in float64, −103 in float32);
/// the lengths are clamped ≥ 1 where averaged (TRL divides by 0 for an empty completion: NaN).
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::cpo_loss`): an input not a
/// vector or of a size other than `policy_chosen_logps`'s, NaN or ±inf entries (naming the input
/// and the pair), β ≤ 0, ε outside [0, 0.5], γ, α or `cpo_alpha` non-finite, `num_pairs` ≤ 0,
/// `num_nll_tokens` < 0 or non-finite, lengths missing where needed (`ipo`, `simpo`, or λ ≠ 0
/// without `num_nll_tokens`), of the wrong size or negative, an AlphaPO reward that overflows
/// (e^{−α·x} = inf: |α·x| beyond ~709), and unknown loss type names (listing the valid ones).
/// B = 0 gives value 0, an empty gradient and metrics 0.

#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>
#include <rlpo/preference/detail/reference_free.hpp>
#include <rlpo/preference/lengths.hpp>

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rlpo::preference {

/// CPOTrainer's loss types (TRL `loss_type`; `alphapo` is a preset, see `make_cpo_options`).
enum class CPOLoss { Sigmoid, Hinge, IPO, SimPO };

struct CPOOptions {
    CPOLoss loss = CPOLoss::Sigmoid;  ///< TRL `loss_type`
    double beta = 0.1;                ///< β (IPO's τ)
    double label_smoothing = 0.0;     ///< ε: `sigmoid` and `simpo` (cDPO form)
    double cpo_alpha = 1.0;           ///< λ: weight of the NLL of the chosen completions
    double simpo_gamma = 0.5;         ///< γ: SimPO's target reward margin
    double alpha = 0.0;               ///< AlphaPO's α (0: r = x)
    /// Denominator of the pair mean: the global pair count of a batch split into micro-batches.
    std::optional<double> num_pairs{};
    /// Denominator of the NLL: the global chosen-token count (unset: Σ|y_c| of this call).
    std::optional<double> num_nll_tokens{};

    /// Current TRL (CPOConfig defaults).
    static CPOOptions trl() { return {}; }
    /// SimPO without the NLL term (the SimPO paper; Liger's default `compute_nll_loss=False`).
    static CPOOptions simpo(double beta = 0.1, double gamma = 0.5) {
        CPOOptions o;
        o.loss = CPOLoss::SimPO;
        o.beta = beta;
        o.simpo_gamma = gamma;
        o.cpo_alpha = 0.0;
        return o;
    }
    /// AlphaPO: TRL's `loss_type="alphapo"` (SimPO, `cpo_alpha` 0) with reward shape α.
    static CPOOptions alphapo(double alpha, double beta = 0.1, double gamma = 0.5) {
        CPOOptions o = simpo(beta, gamma);
        o.alpha = alpha;
        return o;
    }
};

namespace detail {

inline const NameTable<CPOLoss>& cpo_loss_table() {
    static const NameRow<CPOLoss> rows[] = {{"sigmoid", CPOLoss::Sigmoid},
                                            {"hinge", CPOLoss::Hinge},
                                            {"ipo", CPOLoss::IPO},
                                            {"simpo", CPOLoss::SimPO}};
    static const NameTable<CPOLoss> table(rows, sizeof(rows) / sizeof(rows[0]));
    return table;
}

/// Whether the loss type reads length-averaged log-probs (TRL's `average_log_prob`).
inline bool cpo_averages(CPOLoss l) { return l == CPOLoss::IPO || l == CPOLoss::SimPO; }

/// r(x) and r'(x): x itself, or AlphaPO's (1 − e^{−αx})/α with derivative e^{−αx}.
inline std::pair<double, double> alphapo_reward(double x, double alpha) {
    if (alpha == 0.0) return {x, 1.0};
    return {-std::expm1(-alpha * x) / alpha, std::exp(-alpha * x)};
}

/// ℓ(m) and dℓ/dm of one pair (m = r_c − r_r).
inline std::pair<double, double> cpo_pair(double m, const CPOOptions& o) {
    const double b = o.beta, e = o.label_smoothing;
    switch (o.loss) {
        case CPOLoss::Sigmoid:
        case CPOLoss::SimPO: {
            const double h = b * m - (o.loss == CPOLoss::SimPO ? o.simpo_gamma : 0.0);
            const double l = -(1 - e) * log_sigmoid(h) - (e == 0 ? 0.0 : e * log_sigmoid(-h));
            return {l, b * (-(1 - e) * sigmoid(-h) + e * sigmoid(h))};
        }
        case CPOLoss::Hinge: {
            const double z = 1 - b * m;
            return z > 0 ? std::pair<double, double>{z, -b} : std::pair<double, double>{0.0, 0.0};
        }
        case CPOLoss::IPO: {
            const double z = m - 1 / (2 * b);
            return {z * z, 2 * z};
        }
    }
    return {0.0, 0.0};
}

inline void validate(const char* fn, const CPOOptions& o, bool have_lengths) {
    ::rlpo::detail::check_positive(fn, "beta", o.beta);
    RLPO_CHECK(
        std::isfinite(o.label_smoothing) && o.label_smoothing >= 0 && o.label_smoothing <= 0.5, fn,
        "label_smoothing: must be in [0, 0.5], given ", o.label_smoothing);
    ::rlpo::detail::check_finite_param(fn, "cpo_alpha", o.cpo_alpha);
    ::rlpo::detail::check_finite_param(fn, "simpo_gamma", o.simpo_gamma);
    ::rlpo::detail::check_finite_param(fn, "alpha", o.alpha);
    if (o.num_pairs) ::rlpo::detail::check_positive(fn, "num_pairs", *o.num_pairs);
    if (o.num_nll_tokens)
        ::rlpo::detail::check_nonnegative(fn, "num_nll_tokens", *o.num_nll_tokens);
    switch (o.loss) {
        case CPOLoss::Sigmoid:
        case CPOLoss::Hinge:
        case CPOLoss::IPO:
        case CPOLoss::SimPO: break;
        default: ::rlpo::detail::fail(fn, "loss: invalid CPOLoss value ", static_cast<int>(o.loss));
    }
    RLPO_CHECK(!cpo_averages(o.loss) || have_lengths, fn, "lengths: loss type '",
               cpo_loss_table().name_of(o.loss),
               "' averages the log-probs over the completion lengths (as TRL): pass "
               "CompletionLengths");
    RLPO_CHECK(o.cpo_alpha == 0 || have_lengths || o.num_nll_tokens, fn,
               "lengths: the NLL term (cpo_alpha = ", o.cpo_alpha,
               ") is a mean over the chosen completion tokens: pass CompletionLengths or "
               "num_nll_tokens");
}

}  // namespace detail

/// TRL's name of a loss type.
inline const char* to_string(CPOLoss l) { return detail::cpo_loss_table().name_of(l); }

/// Parse a CPOTrainer `loss_type` name (not `alphapo`, which is a preset: `make_cpo_options`).
inline CPOLoss parse_cpo_loss(const std::string& name) {
    return detail::cpo_loss_table().parse("preference::parse_cpo_loss", "CPO loss type", name);
}

/// Options for a TRL `loss_type` on the preset `base`; `alphapo` becomes `simpo` with
/// `cpo_alpha` = 0 and keeps `base.alpha`, as TRL's CPOConfig.__post_init__.
inline CPOOptions make_cpo_options(const std::string& loss_type,
                                   CPOOptions base = CPOOptions::trl()) {
    if (loss_type == "alphapo") {
        base.loss = CPOLoss::SimPO;
        base.cpo_alpha = 0.0;
        return base;
    }
    base.loss =
        detail::cpo_loss_table().parse("preference::make_cpo_options", "CPO loss type", loss_type);
    return base;
}

/// CPO / SimPO / AlphaPO (see the file comment): value, the gradient w.r.t. the summed policy
/// log-probs as a `[2, B]` matrix (row 0 chosen, row 1 rejected) and TRL's metrics.
template <class D1, class D2>
Result<::rlpo::detail::scalar_t<D1>> cpo_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps, const CPOOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {},
    const std::optional<CompletionLengths>& lengths = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<D1>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "preference::cpo_loss";
    const detail::SeqPairs d =
        detail::read_seq_pairs(fn, policy_chosen_logps, policy_rejected_logps, lengths);
    detail::validate(fn, opts, lengths.has_value());
    const std::size_t B = d.size();
    const bool avg = detail::cpo_averages(opts.loss);

    std::vector<double> xc(B), xr(B), rc(B), rr(B), gc(B), gr(B);
    double sum = 0.0;
    for (std::size_t i = 0; i < B; ++i) {
        const double dc = avg ? 1.0 / d.clen(i) : 1.0, dr = avg ? 1.0 / d.rlen(i) : 1.0;
        xc[i] = avg ? d.pc[i] / d.clen(i) : d.pc[i];
        xr[i] = avg ? d.pr[i] / d.rlen(i) : d.pr[i];
        const auto [c, dcx] = detail::alphapo_reward(xc[i], opts.alpha);
        const auto [r, drx] = detail::alphapo_reward(xr[i], opts.alpha);
        RLPO_CHECK(std::isfinite(c) && std::isfinite(r) && std::isfinite(dcx) && std::isfinite(drx),
                   fn, "alpha: the AlphaPO reward (1 − e^{−α·x})/α overflows at pair ", i,
                   " (α = ", opts.alpha, ", x_c = ", xc[i], ", x_r = ", xr[i], ")");
        rc[i] = opts.beta * c;
        rr[i] = opts.beta * r;
        const auto [l, dm] = detail::cpo_pair(c - r, opts);
        sum += l;
        gc[i] = dm * dcx * dc;
        gr[i] = -dm * drx * dr;
    }
    const double n = opts.num_pairs ? *opts.num_pairs : static_cast<double>(B);
    const detail::NllTerm nll(d, opts.num_nll_tokens, opts.cpo_alpha != 0);

    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, 2, static_cast<Index>(B));
    if (g.active())
        for (std::size_t i = 0; i < B; ++i) {
            const Index k = static_cast<Index>(i);
            detail::put_finite(fn, g, 0, k, gc[i] / n - (nll.on ? opts.cpo_alpha / nll.N : 0.0));
            detail::put_finite(fn, g, 1, k, gr[i] / n);
        }
    res.value = g.coef() * ((B > 0 ? sum / n : 0.0) + opts.cpo_alpha * nll.value);
    detail::add_pair_metrics(res.metrics, rc, rr, xc, xr);
    if (opts.cpo_alpha != 0 && lengths)
        res.metrics.add("nll_loss", -nll.sum_c, d.chosen_tokens);
    else
        res.metrics.add("nll_loss", opts.cpo_alpha != 0 ? nll.value : 0.0, 1.0);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
