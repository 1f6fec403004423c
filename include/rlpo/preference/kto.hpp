#pragma once
/// \file
/// KTO: Kahneman–Tversky optimisation on unpaired desirable / undesirable examples (arXiv
/// 2402.01306), with TRL's `KTOTrainer` semantics and its `loss_type`s `kto` and
/// `apo_zero_unpaired`.
///
/// Inputs (`[n_c]` and `[n_r]`, float or double, any Eigen vector or map, N×1 or 1×N; either
/// side may be empty): the summed log-probs of the desirable (chosen) examples under the policy
/// and the reference (π_c, ref_c), and of the undesirable (rejected) ones (π_r, ref_r). The two
/// sides are unpaired: n_c and n_r are independent. With u = π − ref per example, σ the logistic
/// function, z0 the batch KL baseline, λ_D = `desirable_weight`, λ_U = `undesirable_weight`:
///
// clang-format off
/// | loss type (TRL)      | ℓ chosen             | ℓ rejected           | paper |
/// |----------------------|----------------------|----------------------|-------|
/// | `kto`                | 1 − σ(β·(u − z0))    | 1 − σ(β·(z0 − u))    | KTO 2402.01306 eq. 7 |
/// | `apo_zero_unpaired`  | 1 − σ(β·u)           | σ(β·u)               | APO 2408.06266 eq. 7, unpaired |
// clang-format on
///
/// L = (λ_D·Σ_chosen ℓ + λ_U·Σ_rejected ℓ) / N, N = n_c + n_r (TRL: `torch.cat((λ_D·ℓ_chosen,
/// λ_U·ℓ_rejected)).nanmean()`), or the sum over `num_examples` when the caller gives the global
/// example count of a batch split into micro-batches (then the micro-batches add up exactly, given
/// the same z0). 1 − σ(x) is evaluated as σ(−x).
///
/// **KL baseline z0** (`kto` only; TRL `calculate_KL`). TRL estimates it from mismatched
/// (prompt, completion) pairs of the batch: z0 = max(0, mean(π_KL − ref_KL)) with the mean
/// gathered over the data-parallel ranks, clamped at 0 after the gather, and detached. Pass
/// either the precomputed value (`KLBaseline::given(z0)`: the gathered mean; it is clamped at 0
/// here too, which is idempotent for an already clamped value) or the KL log-probs of this call
/// (`KLBaseline::from_logps(policy_KL_logps, ref_KL_logps)`, any common size ≥ 1, independent of
/// n_c and n_r: z0 = max(0, their mean difference)). For micro-batches or several ranks pass the
/// global z0. `apo_zero_unpaired` has no baseline (TRL does not compute one): pass none.
///
/// **Gradient**: w.r.t. the policy log-probs of the examples only, as one `[1, n_c + n_r]`
/// row-major matrix: the n_c chosen entries, then the n_r rejected ones (TRL's concatenation
/// order). z0 is a constant (TRL `.detach()`, as the paper): the KL log-probs get no gradient;
/// nor does the reference. With x = β·(u − z0) (chosen), y = β·(z0 − u) (rejected):
/// `kto`: ∂ℓ/∂π_c = −β·σ(x)σ(−x), ∂ℓ/∂π_r = β·σ(y)σ(−y); `apo_zero_unpaired`:
/// ∂ℓ/∂π_c = −β·σ(βu)σ(−βu), ∂ℓ/∂π_r = β·σ(βu)σ(−βu); each times λ/N.
///
/// **Metrics** (TRL's names; rewards r = β·u): `kl` (z0 as used; 0 for `apo_zero_unpaired`, as
/// TRL), `rewards/chosen`, `logps/chosen` (means over the chosen examples), `rewards/rejected`,
/// `logps/rejected` (over the rejected), each stored as (sum, count) — TRL ≤ 0.24 logged these
/// as `rewards/chosen_sum` … with `count/chosen`, which `Metrics::merge` reproduces: the count
/// is `metrics.at("rewards/chosen").count`. A side without examples reports none of its metrics
/// (TRL logs them only for a count > 0); `rewards/margins` (mean chosen reward − mean rejected
/// reward of this call) only when both sides have examples. TRL's `logits/*`, `entropy` and
/// `num_tokens` need the logits and are not here.
///
/// **Defaults** (TRL KTOConfig = the paper's): β 0.1, λ_D = λ_U = 1, loss type `kto`.
///
/// **Anchor**: TRL `trl/trainer/kto_trainer.py`, `KTOTrainer._compute_loss` (main, f2cd577,
/// 2026-07; the loss was `KTOTrainer.kto_loss` in TRL ≤ 0.24, same formulas), `kto_config.py`.
/// TRL's warning on unbalanced λ_D·n_D vs λ_U·n_U (advice, not a rule) is not reproduced.
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::kto_loss`): an input not a
/// vector, a reference vector of a size other than its side's policy vector, NaN or ±inf entries
/// (naming the input and the entry), β ≤ 0, a weight λ negative or non-finite, `num_examples`
/// ≤ 0, `kto` without a KL baseline or with both a value and log-probs, a KL value that is not
/// finite, KL log-probs empty, of different sizes or non-finite, a baseline given to
/// `apo_zero_unpaired`, and unknown loss type names (listing the valid ones). n_c = n_r = 0
/// gives value 0 and an empty gradient (TRL: the `nanmean` of nothing, NaN).

#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>
#include <rlpo/preference/detail/unpaired.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rlpo::preference {

/// TRL `KTOConfig.loss_type`.
enum class KTOLoss {
    KTO,             ///< `kto`: prospect-theoretic value against the KL baseline z0
    APOZeroUnpaired  ///< `apo_zero_unpaired`: no baseline
};

struct KTOOptions {
    KTOLoss loss = KTOLoss::KTO;      ///< TRL `loss_type`
    double beta = 0.1;                ///< β (TRL `beta`)
    double desirable_weight = 1.0;    ///< λ_D (TRL `desirable_weight`)
    double undesirable_weight = 1.0;  ///< λ_U (TRL `undesirable_weight`)
    /// Denominator of the mean: the global example count n_c + n_r of a batch split into
    /// micro-batches (unset: the local count).
    std::optional<double> num_examples{};

    /// One loss type with the given β.
    static KTOOptions of(KTOLoss loss, double beta = 0.1) {
        KTOOptions o;
        o.loss = loss;
        o.beta = beta;
        return o;
    }
    /// TRL KTOConfig defaults (the same as the paper's and the struct's).
    static KTOOptions trl() { return {}; }
};

/// The batch KL baseline z0 of `kto`: a precomputed value or the KL log-probs (see the file
/// comment); empty for `apo_zero_unpaired`.
struct KLBaseline {
    std::optional<double> value{};                  ///< precomputed z0 (clamped at 0)
    std::optional<Eigen::VectorXd> policy_logps{};  ///< π on the mismatched KL completions
    std::optional<Eigen::VectorXd> ref_logps{};     ///< ref on the same completions

    static KLBaseline given(double z0) {
        KLBaseline b;
        b.value = z0;
        return b;
    }
    static KLBaseline from_logps(Eigen::VectorXd policy_kl_logps, Eigen::VectorXd ref_kl_logps) {
        KLBaseline b;
        b.policy_logps = std::move(policy_kl_logps);
        b.ref_logps = std::move(ref_kl_logps);
        return b;
    }
    bool empty() const { return !value && !policy_logps && !ref_logps; }
};

namespace detail {

// clang-format off
inline constexpr NameRow<KTOLoss> kto_loss_names[] = {
    {"kto", KTOLoss::KTO},
    {"apo_zero_unpaired", KTOLoss::APOZeroUnpaired},
};
// clang-format on
inline constexpr NameTable<KTOLoss> kto_loss_table{kto_loss_names};

inline void validate(const char* fn, const KTOOptions& o) {
    ::rlpo::detail::check_positive(fn, "beta", o.beta);
    ::rlpo::detail::check_nonnegative(fn, "desirable_weight", o.desirable_weight);
    ::rlpo::detail::check_nonnegative(fn, "undesirable_weight", o.undesirable_weight);
    if (o.num_examples) ::rlpo::detail::check_positive(fn, "num_examples", *o.num_examples);
    RLPO_CHECK(o.loss == KTOLoss::KTO || o.loss == KTOLoss::APOZeroUnpaired, fn,
               "loss: invalid KTOLoss value ", static_cast<int>(o.loss));
}

/// z0 of a `kto` call: max(0, given value) or max(0, mean(π_KL − ref_KL)).
inline double kl_baseline(const char* fn, const KTOOptions& o, const KLBaseline& kl) {
    if (o.loss == KTOLoss::APOZeroUnpaired) {
        RLPO_CHECK(kl.empty(), fn,
                   "kl: loss type 'apo_zero_unpaired' has no KL baseline (TRL computes none); "
                   "pass an empty KLBaseline");
        return 0.0;
    }
    RLPO_CHECK(!kl.empty(), fn,
               "kl: loss type 'kto' needs the batch KL baseline z0: pass KLBaseline::given(z0) or "
               "KLBaseline::from_logps(policy_KL_logps, ref_KL_logps)");
    if (kl.value) {
        RLPO_CHECK(!kl.policy_logps && !kl.ref_logps, fn,
                   "kl: give either the value of z0 or the KL log-probs, not both");
        ::rlpo::detail::check_finite_param(fn, "kl.value", *kl.value);
        return std::max(*kl.value, 0.0);
    }
    RLPO_CHECK(kl.policy_logps && kl.ref_logps, fn,
               "kl: both policy_logps and ref_logps of the KL completions are needed");
    const std::vector<double> p = read_pairs(fn, "kl.policy_logps", *kl.policy_logps, -1, "");
    RLPO_CHECK(!p.empty(), fn,
               "kl.policy_logps: at least one KL completion is needed (the mean of none is "
               "undefined)");
    const std::vector<double> r = read_pairs(fn, "kl.ref_logps", *kl.ref_logps,
                                             static_cast<Index>(p.size()), "kl.policy_logps");
    double s = 0.0;
    for (std::size_t k = 0; k < p.size(); ++k) s += p[k] - r[k];
    return std::max(s / static_cast<double>(p.size()), 0.0);
}

}  // namespace detail

/// TRL's name of a loss type.
inline const char* to_string(KTOLoss l) { return detail::kto_loss_table.name_of(l); }

/// Parse a TRL `KTOConfig.loss_type`; unknown names throw listing the valid ones.
inline KTOLoss parse_kto_loss(const std::string& name) {
    return detail::kto_loss_table.parse("preference::parse_kto_loss", "KTO loss type", name);
}

/// The KTO loss (see the file comment), its gradient w.r.t. the policy log-probs as a
/// `[1, n_c + n_r]` matrix (chosen entries first) and TRL's metrics.
template <class D1, class D2, class D3, class D4>
Result<::rlpo::detail::scalar_t<D1>> kto_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps,
    const Eigen::MatrixBase<D3>& ref_chosen_logps, const Eigen::MatrixBase<D4>& ref_rejected_logps,
    const KLBaseline& kl, const KTOOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<D1>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "preference::kto_loss";
    const detail::UnpairedData d = detail::read_unpaired(
        fn, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps);
    detail::validate(fn, opts);
    const double z0 = detail::kl_baseline(fn, opts, kl);
    const std::vector<double> wc(d.pc.size(), opts.desirable_weight),
        wr(d.pr.size(), opts.undesirable_weight);
    const double beta = opts.beta;
    // 1 − σ(x) = σ(−x); d/dx σ(x) = σ(x)σ(−x)
    const auto falling = [beta](double x) {  // ℓ = σ(−βx), dℓ/dx = −β σ(βx)σ(−βx)
        const double a = ::rlpo::sigmoid(beta * x), b = ::rlpo::sigmoid(-beta * x);
        return std::pair<double, double>{b, -beta * a * b};
    };
    Result<S> res;
    if (opts.loss == KTOLoss::KTO)
        res = detail::run_unpaired<S>(
            fn, d, wc, wr, opts.num_examples, out, [&](double u) { return falling(u - z0); },
            [&](double u) {  // σ(−β(z0 − u)) = σ(β(u − z0)), rising in u
                const auto [l, g] = falling(z0 - u);
                return std::pair<double, double>{l, -g};
            });
    else
        res = detail::run_unpaired<S>(
            fn, d, wc, wr, opts.num_examples, out, [&](double u) { return falling(u); },
            [&](double u) {  // σ(βu)
                const auto [l, g] = falling(-u);
                return std::pair<double, double>{l, -g};
            });
    res.metrics.set("kl", z0);
    detail::unpaired_metrics(res.metrics, d, opts.beta);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
