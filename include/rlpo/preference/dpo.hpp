#pragma once
/// \file
/// The DPO family: pairwise preference losses on per-sequence log-probs, with TRL's `loss_type`
/// names (DPOTrainer), each a small kernel + one row of `RLPO_DPO_LOSSES`.
///
/// Inputs (each `[B]`, float or double, any Eigen vector or map; N×1 or 1×N): the summed
/// log-probs of the chosen and rejected completions under the policy (π_c, π_r) and under the
/// reference (ref_c, ref_r). With u_c = π_c − ref_c, u_r = π_r − ref_r, h = β·(u_c − u_r),
/// ε = `label_smoothing`, σ the logistic function, per pair:
///
/// | loss type (TRL)  | ℓ                                                         | paper |
/// |------------------|-----------------------------------------------------------|-------|
/// | `sigmoid`        | −(1−ε)·logσ(h) − ε·logσ(−h)   (ε > 0: cDPO)                | DPO 2305.18290 |
/// | `hinge`          | relu(1 − h)                                               | SLiC 2305.10425 |
/// | `ipo`            | (u_c/|y_c| − u_r/|y_r| − 1/(2β))²   (needs lengths)       | IPO 2310.12036 eq. 17 |
/// | `robust`         | (−(1−ε)·logσ(h) + ε·logσ(−h)) / (1 − 2ε)                  | rDPO 2403.00409 |
/// | `exo_pair`       | σ(h)(logσ(h) − log(1−ε)) + σ(−h)(logσ(−h) − log ε)        | EXO 2402.00856 eq. 16 |
/// | `nca_pair`       | −logσ(βu_c) − ½logσ(−βu_c) − ½logσ(−βu_r)                 | NCA 2402.05369 |
/// | `sppo_hard`      | (u_c − 1/(2β))² + (u_r + 1/(2β))²                          | SPPO 2405.00675 |
/// | `aot`            | sigmoid form on δ_k = sort(π_c − π_r)_k − sort(ref_c − ref_r)_k | AOT 2406.05882 |
/// | `aot_unpaired`   | sigmoid form on δ_k = sort(u_c)_k − sort(u_r)_k            | AOT 2406.05882 |
/// | `apo_zero`       | 1 − σ(βu_c) + σ(βu_r)                                      | APO 2408.06266 eq. 7 |
/// | `apo_down`       | σ(βu_c) + 1 − σ(h)                                         | APO 2408.06266 eq. 8 |
/// | `discopop`       | −logσ(h)·(1 − σ(h/τ)) + e^{−h}·σ(h/τ)                      | DiscoPOP 2406.08414 eq. 5 |
/// | `bco_pair`       | −logσ(βu_c − δ) − logσ(−(βu_r − δ))                        | BCO 2404.04656 |
/// | `sigmoid_norm`   | −logσ(β·(u_c/|y_c| − u_r/|y_r|))   (needs lengths)        | TRL |
/// | `sft`            | NLL = −Σ_i π_c,i / Σ_i |y_c,i|   (batch term; see below)  | TRL |
///
/// ("sigmoid form" = the `sigmoid` row with β·δ_k in place of h.) **f-DPO** (TRL
/// `f_divergence_type`, `FDivergence` in preference/f_divergence.hpp): every loss type reads the
/// log-ratios through the score s(u) (u itself for reverse KL, the default), except where TRL uses
/// the raw log-ratios: `aot`, `aot_unpaired`, `apo_zero` and `apo_down`'s σ(βu_c) term. The loss is
/// the mean over the B pairs (TRL's `losses.mean()`), or the sum divided by `num_pairs` when the
/// caller gives the global pair count of a batch split into micro-batches. Several loss types
/// combine as Σ_j w_j·mean(ℓ_j) (TRL `loss_type` list + `loss_weights`, default weights 1).
/// Optional `pair_weights` ω_i ≥ 0 (constants, no gradient) multiply each pair's loss in every
/// term: WPO (arXiv 2406.11827, TRL `use_weighting`: ω = w_c·w_r, each w = exp(mean per-token
/// aligned log-prob), computed by the caller from its logits); not with the sorting `aot*` (TRL
/// raises).
///
/// **Gradient**: w.r.t. the two *policy* inputs only (the reference is a constant), returned as
/// one `[2, B]` row-major matrix: row 0 = ∂L/∂π_c, row 1 = ∂L/∂π_r. That is the layout of TRL's
/// concatenated `[chosen; rejected]` log-probs (`logps.chunk(2)`), so a trainer holding that
/// `[2B]` buffer passes `rlpo::write_to<S>(rlpo::view(grad_ptr, 2, B))` (or `add_to`, `no_grad`).
/// ∂ℓ/∂π = ∂ℓ/∂u. Per kernel: the closed forms are in `detail::*Kernel` below. AOT sorts: the
/// gradient of sorted position k goes to the pair that occupies it (ties: stable order).
///
/// **Metrics** (TRL's names, means over the pairs; rewards r = β·u): `rewards/chosen`,
/// `rewards/rejected`, `rewards/accuracies` (fraction with r_c > r_r, strictly),
/// `rewards/margins` (mean r_c − r_r), `logps/chosen`, `logps/rejected` (mean π_c, π_r).
///
/// **Defaults** (TRL DPOConfig): β 0.1, ε 0, τ 0.05 (`discopop_tau`), loss type `sigmoid`.
///
/// **Anchor**: TRL `trl/trainer/dpo_trainer.py`, `DPOTrainer._compute_loss` (main, f2cd577,
/// 2026-07) for every loss type; TRL ≤ 0.24 `DPOTrainer.dpo_loss` where it differs. See
/// docs/preference.md for the decisions: `sigmoid` applies ε (cDPO, TRL ≤ 0.24; current TRL
/// ignores ε there: `DPOOptions::trl()`); `bco_pair`'s running mean δ is an option (TRL ≤ 0.24
/// subtracts its running mean of the rewards, current TRL does not: δ = 0); `ipo` and
/// `sigmoid_norm` average the log-ratios over the completion lengths |y| (clamped ≥ 1), which
/// the caller passes (`CompletionLengths`); TRL's `aot_pair` (≤ 0.24) is accepted for
/// `aot_unpaired`. `sft` is TRL's cross-entropy over the chosen completion tokens, a token mean
/// over the batch, which over the same tokens equals −Σ_i π_c,i / N with the raw summed policy
/// log-probs π_c and N = Σ_i |y_c,i| (unclamped; needs `CompletionLengths`) or `num_sft_tokens`
/// (a global count; a token mean, not divided by `num_pairs`; with both global counts the
/// micro-batches add up). Its gradient is −w/N on every
/// chosen entry; with pair weights it is TRL's mean(ω)·NLL (not micro-batch invariant, as TRL).
/// N = 0 gives 0 (TRL: NaN). (TRL's `ld_alpha` mixes the summed log-probs upstream of this
/// call, `preference::ld_logps` in preference/ld_dpo.hpp, while its `sft` reads the raw token
/// log-probs: with `ld_alpha`, pass the raw sums' NLL separately.)
/// `discopop`'s e^{−h}·σ(h/τ) is evaluated as exp(−h + logσ(h/τ)), finite where TRL's product
/// gives inf·0 = NaN.
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::dpo_loss`): an input not a
/// vector or of a size other than `policy_chosen_logps`'s, NaN or ±inf entries (naming the input
/// and the pair), β ≤ 0, ε outside [0, 0.5] (and ε = 0.5 for `robust`, ε = 0 for `exo_pair`),
/// τ ≤ 0, δ or `f_alpha` non-finite, `num_pairs` ≤ 0, an empty loss list, weights not matching the loss
/// list or non-finite, lengths missing for `ipo` / `sigmoid_norm` (for `sft`: unless
/// `num_sft_tokens` is given) or of the wrong size or negative, `num_sft_tokens` < 0 or non-finite,
/// pair weights of the wrong size, negative or non-finite, or given with `aot*`, and unknown loss
/// type names (listing the valid ones). B = 0 gives value 0, gradient 0, metrics 0. Finite
/// inputs whose loss, derivative (in the storage type) or metrics overflow throw
/// `rlpo::numerical_error` naming the entry (the rule of docs/contract.md; every preference
/// loss keeps it).

#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>
#include <rlpo/preference/f_divergence.hpp>
#include <rlpo/preference/lengths.hpp>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace rlpo::preference {

// clang-format off
/// The registry, one row per loss type: X(Enum, Kernel, names...), the canonical (TRL) name
/// first. The enum, the name table, `to_string`, `parse_dpo_loss` and the dispatch of
/// `dpo_loss` are generated from it.
#define RLPO_DPO_LOSSES(X)                                        \
    X(Sigmoid, SigmoidKernel, "sigmoid")                          \
    X(Hinge, HingeKernel, "hinge")                                \
    X(IPO, IPOKernel, "ipo")                                      \
    X(Robust, RobustKernel, "robust")                             \
    X(EXOPair, EXOPairKernel, "exo_pair")                         \
    X(NCAPair, NCAPairKernel, "nca_pair")                         \
    X(SPPOHard, SPPOHardKernel, "sppo_hard")                      \
    X(AOT, AOTKernel, "aot")                                      \
    X(AOTUnpaired, AOTUnpairedKernel, "aot_unpaired", "aot_pair") \
    X(APOZero, APOZeroKernel, "apo_zero")                         \
    X(APODown, APODownKernel, "apo_down")                         \
    X(DiscoPOP, DiscoPOPKernel, "discopop")                       \
    X(BCOPair, BCOPairKernel, "bco_pair")                         \
    X(SigmoidNorm, SigmoidNormKernel, "sigmoid_norm")             \
    X(SFT, SFTKernel, "sft")
// clang-format on

#define RLPO_DPO_LOSS_ENUM(E, K, ...) E,
enum class DPOLoss { RLPO_DPO_LOSSES(RLPO_DPO_LOSS_ENUM) };
#undef RLPO_DPO_LOSS_ENUM

/// One term of the loss: a loss type and its weight (TRL `loss_weights`).
struct DPOTerm {
    DPOLoss loss = DPOLoss::Sigmoid;
    double weight = 1.0;
};

struct DPOOptions {
    /// The loss types and their weights (TRL `loss_type` list and `loss_weights`).
    std::vector<DPOTerm> terms{DPOTerm{}};
    double beta = 0.1;             ///< β (TRL `beta`; IPO's τ)
    double label_smoothing = 0.0;  ///< ε: cDPO (`sigmoid`), `robust`, `exo_pair`, `aot*`
    /// Whether `sigmoid` applies ε (cDPO, TRL ≤ 0.24). Current TRL ignores ε for `sigmoid`.
    bool sigmoid_label_smoothing = true;
    double discopop_tau = 0.05;  ///< τ of `discopop` (TRL `discopop_tau`)
    double bco_delta = 0.0;      ///< δ of `bco_pair`: TRL ≤ 0.24's running mean of the rewards
    FDivergence f_divergence = FDivergence::ReverseKL;  ///< TRL `f_divergence_type`
    double f_alpha = 0.5;  ///< α of `FDivergence::Alpha` (TRL `f_alpha_divergence_coef`)
    /// Denominator of the mean: the global pair count of a batch split into micro-batches
    /// (unset: the local B). `aot*` sort within the call and are not micro-batch invariant.
    std::optional<double> num_pairs{};
    /// Denominator of `sft`'s token mean: the global chosen-token count (unset: the call's Σ|y_c|).
    std::optional<double> num_sft_tokens{};

    /// One loss type with weight 1.
    static DPOOptions of(DPOLoss loss, double beta = 0.1) {
        DPOOptions o;
        o.terms = {DPOTerm{loss, 1.0}};
        o.beta = beta;
        return o;
    }
    /// Current TRL (DPOConfig defaults; `sigmoid` ignores label_smoothing; bco_pair δ = 0).
    static DPOOptions trl() {
        DPOOptions o;
        o.sigmoid_label_smoothing = false;
        return o;
    }
};

namespace detail {

using ::rlpo::log_sigmoid;
using ::rlpo::sigmoid;

inline void check_smoothing_range(const char* fn, const DPOOptions& o) {
    RLPO_CHECK(
        std::isfinite(o.label_smoothing) && o.label_smoothing >= 0 && o.label_smoothing <= 0.5, fn,
        "label_smoothing: must be in [0, 0.5], given ", o.label_smoothing);
}

/// −(1−ε)·logσ(h) − ε·logσ(−h) and its derivative in h.
inline std::pair<double, double> smoothed_sigmoid(double h, double eps) {
    const double l = -(1 - eps) * log_sigmoid(h) - (eps == 0 ? 0.0 : eps * log_sigmoid(-h));
    const double d = -(1 - eps) * sigmoid(-h) + eps * sigmoid(h);
    return {l, d};
}

struct SigmoidKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double eps = o.sigmoid_label_smoothing ? o.label_smoothing : 0.0;
        const auto [l, d] = smoothed_sigmoid(o.beta * (p.sc - p.sr), eps);
        return {l, 0.0, 0.0, o.beta * d, -o.beta * d};
    }
};

struct HingeKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double m = 1 - o.beta * (p.sc - p.sr);
        // relu'(0) = 0, as torch
        return m > 0 ? PairLossGrad{m, 0.0, 0.0, -o.beta, o.beta} : PairLossGrad{0.0, 0.0, 0.0};
    }
};

struct IPOKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = true;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double e = p.sc / p.len_c - p.sr / p.len_r - 1 / (2 * o.beta);
        return {e * e, 0.0, 0.0, 2 * e / p.len_c, -2 * e / p.len_r};
    }
};

struct RobustKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char* fn, const DPOOptions& o) {
        RLPO_CHECK(o.label_smoothing < 0.5, fn,
                   "label_smoothing: must be < 0.5 for 'robust' (divides by 1 − 2ε), given ",
                   o.label_smoothing);
    }
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double h = o.beta * (p.sc - p.sr), e = o.label_smoothing, z = 1 - 2 * e;
        const double l = (-(1 - e) * log_sigmoid(h) + e * log_sigmoid(-h)) / z;
        const double d = (-(1 - e) * sigmoid(-h) - e * sigmoid(h)) / z;
        return {l, 0.0, 0.0, o.beta * d, -o.beta * d};
    }
};

struct EXOPairKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char* fn, const DPOOptions& o) {
        RLPO_CHECK(o.label_smoothing > 0, fn,
                   "label_smoothing: must be > 0 for 'exo_pair' (log ε; the EXO paper uses 1e-3), "
                   "given ",
                   o.label_smoothing);
    }
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double h = o.beta * (p.sc - p.sr), e = o.label_smoothing;
        const double a = std::log1p(-e), b = std::log(e);
        const double lp = log_sigmoid(h), lq = log_sigmoid(-h), P = sigmoid(h), Q = sigmoid(-h);
        const double l = P * (lp - a) + Q * (lq - b);
        // d/dh = σ(h)σ(−h)·(h − log(1−ε) + log ε)
        const double d = P * Q * (h - a + b);
        return {l, 0.0, 0.0, o.beta * d, -o.beta * d};
    }
};

struct NCAPairKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double rc = o.beta * p.sc, rr = o.beta * p.sr;
        const double l = -log_sigmoid(rc) - 0.5 * log_sigmoid(-rc) - 0.5 * log_sigmoid(-rr);
        return {l, 0.0, 0.0, o.beta * (-sigmoid(-rc) + 0.5 * sigmoid(rc)),
                o.beta * 0.5 * sigmoid(rr)};
    }
};

struct SPPOHardKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double a = p.sc - 0.5 / o.beta, b = p.sr + 0.5 / o.beta;
        return {a * a + b * b, 0.0, 0.0, 2 * a, 2 * b};
    }
};

/// AOT (paired): uc = the k-th smallest π_c − π_r, ur = the k-th smallest ref_c − ref_r.
struct AOTKernel {
    static constexpr Pairing pairing = Pairing::SortedPaired;
    static constexpr bool needs_lengths = false;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const auto [l, d] = smoothed_sigmoid(o.beta * (p.uc - p.ur), o.label_smoothing);
        return {l, o.beta * d, -o.beta * d};
    }
};

/// AOT (unpaired): uc = the k-th smallest u_c, ur = the k-th smallest u_r.
struct AOTUnpairedKernel : AOTKernel {
    static constexpr Pairing pairing = Pairing::SortedUnpaired;
};

struct APOZeroKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double c = o.beta * p.uc, r = o.beta * p.ur;
        const double sc = sigmoid(c), sr = sigmoid(r);
        return {sigmoid(-c) + sr, -o.beta * sc * sigmoid(-c), o.beta * sr * sigmoid(-r)};
    }
};

struct APODownKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        // TRL: the chosen term on the raw log-ratio, the margin term on the scores
        const double c = o.beta * p.uc, h = o.beta * (p.sc - p.sr);
        const double dc = sigmoid(c) * sigmoid(-c), dh = sigmoid(h) * sigmoid(-h);
        return {sigmoid(c) + sigmoid(-h), o.beta * dc, 0.0, -o.beta * dh, o.beta * dh};
    }
};

struct DiscoPOPKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char* fn, const DPOOptions& o) {
        ::rlpo::detail::check_positive(fn, "discopop_tau", o.discopop_tau);
    }
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double h = o.beta * (p.sc - p.sr), tau = o.discopop_tau;
        const double m = sigmoid(h / tau), lsm = log_sigmoid(h / tau), lsn = log_sigmoid(-h / tau);
        const double em = std::exp(-h + lsm);                     // e^{−h}·σ(h/τ)
        const double emm = std::exp(-h + lsm + lsn) / tau;        // e^{−h}·σ'(h/τ)/τ
        const double dm_ls = m * (1 - m) / tau * log_sigmoid(h);  // σ'·logσ(h)/τ
        const double l = -log_sigmoid(h) * (1 - m) + em;
        const double d = -sigmoid(-h) * (1 - m) + dm_ls + emm - em;
        return {l, 0.0, 0.0, o.beta * d, -o.beta * d};
    }
};

struct BCOPairKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = false;
    static void validate(const char* fn, const DPOOptions& o) {
        ::rlpo::detail::check_finite_param(fn, "bco_delta", o.bco_delta);
    }
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double c = o.beta * p.sc - o.bco_delta, r = o.beta * p.sr - o.bco_delta;
        return {-log_sigmoid(c) - log_sigmoid(-r), 0.0, 0.0, -o.beta * sigmoid(-c),
                o.beta * sigmoid(r)};
    }
};

struct SigmoidNormKernel {
    static constexpr Pairing pairing = Pairing::Pair;
    static constexpr bool needs_lengths = true;
    static void validate(const char*, const DPOOptions&) {}
    static PairLossGrad eval(const PairInput& p, const DPOOptions& o) {
        const double h = o.beta * (p.sc / p.len_c - p.sr / p.len_r);
        const double d = -sigmoid(-h);
        return {-log_sigmoid(h), 0.0, 0.0, o.beta * d / p.len_c, -o.beta * d / p.len_r};
    }
};

/// `sft`: a batch term (TRL's cross-entropy over the chosen completion tokens), evaluated by
/// the `ChosenNLL` branch of `run_kernel`; there is no per-pair math.
struct SFTKernel {
    static constexpr Pairing pairing = Pairing::ChosenNLL;
    static constexpr bool needs_lengths = false;  // lengths or num_sft_tokens: dpo_loss checks
    static void validate(const char* fn, const DPOOptions& o) {
        if (o.num_sft_tokens)
            ::rlpo::detail::check_nonnegative(fn, "num_sft_tokens", *o.num_sft_tokens);
    }
};

/// Every accepted spelling, from the registry rows (each row's canonical name first).
inline const NameTable<DPOLoss>& dpo_loss_table() {
    static const std::vector<NameRow<DPOLoss>> rows = [] {
        std::vector<NameRow<DPOLoss>> v;
#define RLPO_DPO_LOSS_NAMES(E, K, ...) \
    for (const char* n : {__VA_ARGS__}) v.push_back({n, DPOLoss::E});
        RLPO_DPO_LOSSES(RLPO_DPO_LOSS_NAMES)
#undef RLPO_DPO_LOSS_NAMES
        return v;
    }();
    static const NameTable<DPOLoss> table(rows.data(), rows.size());
    return table;
}

/// The data of one call, in double.
struct PairData {
    std::vector<double> pc, pr, rc, rr, len_c, len_r;  ///< lengths empty when not given
    std::vector<double> w;                             ///< pair weights, empty when not given
    double beta;
};

/// Σ_k ℓ_k of one kernel over the B pairs, adding weight·∂ℓ/∂π into gc, gr (sizes B).
template <class K>
double run_kernel(const PairData& d, const DPOOptions& o, double weight, std::vector<double>& gc,
                  std::vector<double>& gr) {
    const std::size_t B = d.pc.size();
    double sum = 0.0;
    const auto len = [&](const std::vector<double>& L, std::size_t i) {
        return L.empty() ? 1.0 : std::max(L[i], 1.0);
    };
    if constexpr (K::pairing == Pairing::Pair) {
        for (std::size_t i = 0; i < B; ++i) {
            const double uc = d.pc[i] - d.rc[i], ur = d.pr[i] - d.rr[i];
            const auto [sc, dsc] = f_score(uc, o.f_divergence, o.f_alpha);
            const auto [sr, dsr] = f_score(ur, o.f_divergence, o.f_alpha);
            const PairInput p{uc, ur, sc, sr, len(d.len_c, i), len(d.len_r, i)};
            const PairLossGrad r = K::eval(p, o);
            const double wi = d.w.empty() ? 1.0 : d.w[i];
            sum += wi * r.loss;
            gc[i] += weight * wi * (r.d_uc + r.d_sc * dsc);
            gr[i] += weight * wi * (r.d_ur + r.d_sr * dsr);
        }
    } else if constexpr (K::pairing == Pairing::ChosenNLL) {
        // TRL: one NLL for the batch, expanded to every pair and weighted by ω, then averaged:
        // mean(ω)·NLL. Σ_i ℓ_i = n·mean(ω)·NLL, so that the driver's division by n leaves it.
        double tokens = 0.0, sum_c = 0.0, sum_w = 0.0;
        for (std::size_t i = 0; i < B; ++i) {
            tokens += d.len_c.empty() ? 0.0 : d.len_c[i];
            sum_c += d.pc[i];
            sum_w += d.w.empty() ? 1.0 : d.w[i];
        }
        const double N = o.num_sft_tokens ? *o.num_sft_tokens : tokens;
        if (B == 0 || N <= 0) return 0.0;  // no chosen tokens: 0 (TRL: NaN)
        const double n = o.num_pairs ? *o.num_pairs : static_cast<double>(B);
        const double scale = n * sum_w / static_cast<double>(B);
        sum = -scale * sum_c / N;
        for (std::size_t i = 0; i < B; ++i) gc[i] -= weight * scale / N;
    } else {
        std::vector<double> a(B), b(B);
        for (std::size_t i = 0; i < B; ++i) {
            if (K::pairing == Pairing::SortedPaired) {
                a[i] = d.pc[i] - d.pr[i];  // policy log-ratio of the pair (differentiable)
                b[i] = d.rc[i] - d.rr[i];  // reference log-ratio (constant)
            } else {
                a[i] = d.pc[i] - d.rc[i];  // u_c
                b[i] = d.pr[i] - d.rr[i];  // u_r
            }
        }
        const auto ia = argsort(a), ib = argsort(b);
        for (std::size_t k = 0; k < B; ++k) {
            const PairLossGrad r =
                K::eval(PairInput{a[ia[k]], b[ib[k]], a[ia[k]], b[ib[k]], 1.0, 1.0}, o);
            sum += r.loss;
            gc[ia[k]] += weight * r.d_uc;
            if (K::pairing == Pairing::SortedPaired)
                gr[ia[k]] -= weight * r.d_uc;  // a = π_c − π_r; b is constant
            else
                gr[ib[k]] += weight * r.d_ur;
        }
    }
    return sum;
}

/// Validation of every term's kernel (the shared checks come first).
inline void validate(const char* fn, const DPOOptions& o, bool have_lengths, bool have_weights) {
    ::rlpo::detail::check_positive(fn, "beta", o.beta);
    check_smoothing_range(fn, o);
    if (o.num_pairs) ::rlpo::detail::check_positive(fn, "num_pairs", *o.num_pairs);
    RLPO_CHECK(!o.terms.empty(), fn, "terms: at least one loss type is needed");
    if (o.f_divergence == FDivergence::Alpha)
        ::rlpo::detail::check_finite_param(fn, "f_alpha", o.f_alpha);
    for (const DPOTerm& t : o.terms) {
        ::rlpo::detail::check_finite_param(fn, "terms: weight", t.weight);
        switch (t.loss) {
#define RLPO_DPO_LOSS_VALIDATE(E, K, ...)                                                         \
    case DPOLoss::E:                                                                              \
        K::validate(fn, o);                                                                       \
        RLPO_CHECK(!K::needs_lengths || have_lengths, fn, "lengths: loss type '",                 \
                   dpo_loss_table().name_of(DPOLoss::E),                                          \
                   "' averages the log-ratios over the completion lengths (as TRL): pass "        \
                   "CompletionLengths (all 1 for the unnormalised form)");                        \
        RLPO_CHECK(                                                                               \
            K::pairing == Pairing::Pair || K::pairing == Pairing::ChosenNLL || !have_weights, fn, \
            "pair_weights: loss type '", dpo_loss_table().name_of(DPOLoss::E),                    \
            "' sorts the pairs, which would misalign per-pair weights (TRL raises)");             \
        break;
            RLPO_DPO_LOSSES(RLPO_DPO_LOSS_VALIDATE)
#undef RLPO_DPO_LOSS_VALIDATE
            default:
                ::rlpo::detail::fail(fn, "terms: invalid DPOLoss value ", static_cast<int>(t.loss));
        }
    }
}

}  // namespace detail

/// TRL's name of a loss type.
inline const char* to_string(DPOLoss l) { return detail::dpo_loss_table().name_of(l); }

/// Parse a TRL `loss_type` name; unknown names throw listing every valid name.
inline DPOLoss parse_dpo_loss(const std::string& name) {
    return detail::dpo_loss_table().parse("preference::parse_dpo_loss", "DPO loss type", name);
}

/// Options for TRL's `loss_type` list and `loss_weights` (empty weights: all 1), with the
/// preset `base` (default: current TRL).
inline DPOOptions make_dpo_options(const std::vector<std::string>& loss_types,
                                   const std::vector<double>& loss_weights = {},
                                   DPOOptions base = DPOOptions::trl()) {
    constexpr const char* fn = "preference::make_dpo_options";
    RLPO_CHECK(!loss_types.empty(), fn, "loss_types: at least one loss type is needed");
    RLPO_CHECK(loss_weights.empty() || loss_weights.size() == loss_types.size(), fn,
               "loss_weights: expected ", loss_types.size(), " weights (one per loss type), given ",
               loss_weights.size());
    base.terms.clear();
    for (std::size_t k = 0; k < loss_types.size(); ++k)
        base.terms.push_back(
            DPOTerm{detail::dpo_loss_table().parse(fn, "DPO loss type", loss_types[k]),
                    loss_weights.empty() ? 1.0 : loss_weights[k]});
    return base;
}

/// The DPO-family loss (see the file comment), its gradient w.r.t. the policy log-probs as a
/// `[2, B]` matrix (row 0 chosen, row 1 rejected) and TRL's metrics. `lengths`: for `ipo` and
/// `sigmoid_norm`; `pair_weights`: WPO weights (the metrics are unweighted, as TRL's).
template <class D1, class D2, class D3, class D4>
Result<::rlpo::detail::scalar_t<D1>> dpo_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps,
    const Eigen::MatrixBase<D3>& ref_chosen_logps, const Eigen::MatrixBase<D4>& ref_rejected_logps,
    const DPOOptions& opts = {}, const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {},
    const std::optional<CompletionLengths>& lengths = std::nullopt,
    const std::optional<Eigen::VectorXd>& pair_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<D1>;
    constexpr const char* fn = "preference::dpo_loss";
    detail::PairData d;
    detail::FourLogps four = detail::read_four(fn, policy_chosen_logps, policy_rejected_logps,
                                               ref_chosen_logps, ref_rejected_logps);
    const Index B = four.B;
    d.pc = std::move(four.pc);
    d.pr = std::move(four.pr);
    d.rc = std::move(four.rc);
    d.rr = std::move(four.rr);
    std::tie(d.len_c, d.len_r) = detail::read_lengths(fn, lengths, B);
    if (pair_weights) {
        d.w = four.read("pair_weights", *pair_weights);
        for (Index k = 0; k < B; ++k)
            RLPO_CHECK(d.w[static_cast<std::size_t>(k)] >= 0, fn,
                       "pair_weights: must be >= 0, given ", d.w[static_cast<std::size_t>(k)],
                       " at pair ", k);
    }
    d.beta = opts.beta;
    detail::validate(fn, opts, lengths.has_value(), pair_weights.has_value());
    for (const DPOTerm& t : opts.terms)
        RLPO_CHECK(t.loss != DPOLoss::SFT || lengths || opts.num_sft_tokens, fn,
                   "lengths: loss type 'sft' is a mean over the chosen completion tokens (as TRL): "
                   "pass CompletionLengths or num_sft_tokens");

    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, 2, B);
    const double n = opts.num_pairs ? *opts.num_pairs : static_cast<double>(B);
    const std::size_t Bs = static_cast<std::size_t>(B);
    std::vector<double> gc(Bs, 0.0), gr(Bs, 0.0);
    double value = 0.0;
    for (const DPOTerm& t : opts.terms) {
        double sum = 0.0;
        switch (t.loss) {
#define RLPO_DPO_LOSS_RUN(E, K, ...) \
    case DPOLoss::E: sum = detail::run_kernel<detail::K>(d, opts, t.weight, gc, gr); break;
            RLPO_DPO_LOSSES(RLPO_DPO_LOSS_RUN)
#undef RLPO_DPO_LOSS_RUN
        }
        value += B > 0 ? t.weight * sum / n : 0.0;
    }
    if (g.active())
        for (Index i = 0; i < B; ++i) {
            const std::size_t k = static_cast<std::size_t>(i);
            detail::put_finite(fn, g, 0, i, gc[k] / n);
            detail::put_finite(fn, g, 1, i, gr[k] / n);
        }
    res.value = g.coef() * value;

    double rc = 0, rr = 0, acc = 0, lc = 0, lr = 0;
    for (std::size_t i = 0; i < Bs; ++i) {
        const double a = opts.beta * (d.pc[i] - d.rc[i]), b = opts.beta * (d.pr[i] - d.rr[i]);
        rc += a;
        rr += b;
        acc += a > b ? 1.0 : 0.0;
        lc += d.pc[i];
        lr += d.pr[i];
    }
    const double nb = static_cast<double>(B);
    res.metrics.add("rewards/chosen", rc, nb);
    res.metrics.add("rewards/rejected", rr, nb);
    res.metrics.add("rewards/accuracies", acc, nb);
    res.metrics.add("rewards/margins", rc - rr, nb);
    res.metrics.add("logps/chosen", lc, nb);
    res.metrics.add("logps/rejected", lr, nb);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
