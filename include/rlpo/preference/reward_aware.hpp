#pragma once
/// \file
/// Reward-aware preference optimisation: NeMo-Aligner's DPO model with its `preference_loss`
/// variants (`dpo`, `ipo`, `rpo_sq`, `rpo_bwd_kl`, `rpo_fwd_kl`) and its SFT term. The `rpo_*`
/// losses are the "Reward-aware Preference Optimization" of the Nemotron-4 340B report (arXiv
/// 2406.11704): the implicit reward margin of the policy is fitted to the margin of given
/// ground-truth rewards. rlpo calls it `reward_aware_po` so that it does not collide with RPO
/// (preference/rpo.hpp, arXiv 2405.16436), a different method with the same acronym.
///
/// Inputs (each `[B]`, float or double; N×1 or 1×N): per-sequence log-probs of the chosen and
/// rejected completions under the policy (π_c, π_r) and the reference (ref_c, ref_r), and the
/// ground-truth rewards r_c, r_r of the two completions (NeMo's `chosen_rewards`,
/// `rejected_rewards`; read by the `rpo_*` losses only: `dpo` and `ipo` accept empty vectors).
/// The log-probs are sums, or per-token means when NeMo's `preference_average_log_probs` is set:
/// that reduction is upstream of this call (pass the means). With β = `ref_policy_kl_penalty`, η = `gt_reward_scale`, σ the logistic function:
///
///     Δ = (π_c − ref_c) − (π_r − ref_r),   z = β·Δ,   g = η·(r_c − r_r),
///
/// | `preference_loss` | ℓ per pair                                              |
/// |-------------------|---------------------------------------------------------|
/// | `dpo`             | −logσ(z)                                                |
/// | `ipo`             | (Δ − 1/(2β))²                                           |
/// | `rpo_sq`          | (z − g)²                                                |
/// | `rpo_bwd_kl`      | σ(g)·(logσ(g) − logσ(z)) + σ(−g)·(logσ(−g) − logσ(−z))  |
/// | `rpo_fwd_kl`      | σ(z)·(logσ(z) − logσ(g)) + σ(−z)·(logσ(−z) − logσ(−g))  |
///
/// (`rpo_bwd_kl` = KL(Ber σ(g) ‖ Ber σ(z)), `rpo_fwd_kl` = KL(Ber σ(z) ‖ Ber σ(g)).)
///
/// and the loss is
///
///     L = w_p·(1/N)·Σ_i ℓ_i + w_s·(1/N)·Σ_i (−π_c,i),
///
/// w_p = `preference_loss_weight`, w_s = `sft_loss_weight` (NeMo's `sft_loss_func`: minus the mean
/// chosen log-prob, on the same reduced log-probs here; NeMo's separate `sft_average_log_probs`
/// defaults to the preference one), N = B (NeMo's `.mean(0)`) or `num_pairs`.
///
/// **Gradient** w.r.t. the two policy inputs only (reference and rewards are constants), one
/// `[2, B]` row-major matrix (row 0 chosen, row 1 rejected): ∂L/∂π_c,i = (w_p·dℓ/dΔ − w_s)/N,
/// ∂L/∂π_r,i = −w_p·(dℓ/dΔ)/N, with dℓ/dΔ = −β·σ(−z) (`dpo`), 2·(Δ − 1/(2β)) (`ipo`),
/// 2β·(z − g) (`rpo_sq`), β·(σ(z) − σ(g)) (`rpo_bwd_kl`), β·σ(z)·σ(−z)·(z − g) (`rpo_fwd_kl`).
///
/// **Metrics** (NeMo's names, `get_loss_and_metrics`): `loss`, `preference_loss`, `sft_loss`
/// (the weighted total and its two parts, each over N), `acc` (fraction of pairs with
/// π_c − ref_c > π_r − ref_r, strictly), `rewards_chosen_mean`, `rewards_rejected_mean`,
/// `rewards_all_mean` (means of the *unscaled* log-ratios π − ref, as NeMo's `out_chosen`,
/// `out_rejected`), `rewards_all_std` (the unbiased std of the 2B log-ratios, torch's
/// `std()`). `loss`, `preference_loss`, `sft_loss` and `rewards_all_std` are this call's values
/// (`Metrics::set`); the means merge over micro-batches. NeMo's `loss`, `preference_loss` and
/// `sft_loss` are its per-micro-batch values averaged over the micro-batches.
///
/// **Defaults** (NeMo-Aligner `examples/nlp/gpt/conf/gpt_dpo.yaml`): β 0.2, η 1, w_p 1, w_s 0.
/// The loss type defaults to `rpo_bwd_kl`, the Nemotron-4 340B form (NeMo's own default is
/// `dpo`: `RewardAwareOptions::nemo()`).
///
/// **Anchor**: NVIDIA/NeMo-Aligner (commit af2b3bd), `nemo_aligner/models/nlp/gpt/
/// megatron_gpt_dpo_model.py`, `MegatronGPTDPOModel.loss_func` (the five losses),
/// `sft_loss_func`, and `get_forward_output_and_loss_func` (the weighted sum). NeMo names β
/// `ref_policy_kl_penalty` and η `gt_reward_scale`; its `rpo_bwd_kl` is KL(reward ‖ policy) and
/// `rpo_fwd_kl` KL(policy ‖ reward) as written above. rlpo evaluates logσ stably and the KL terms
/// through σ = exp(logσ), which is NeMo's own form.
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::reward_aware_po_loss`): an
/// input not a vector or of a size other than `policy_chosen_logps`'s (the rewards may be empty
/// for `dpo` / `ipo` only), NaN or ±inf entries (naming the input and the pair), β ≤ 0, η
/// non-finite, weights non-finite or both 0 (NeMo asserts), `num_pairs` ≤ 0, unknown loss names
/// (listing the valid ones). B = 0 gives value 0, gradient 0, metrics 0.

#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rlpo::preference {

/// NeMo-Aligner's `preference_loss` values.
enum class RewardAwareLoss { DPO, IPO, Sq, BwdKL, FwdKL };

struct RewardAwareOptions {
    RewardAwareLoss loss = RewardAwareLoss::BwdKL;  ///< NeMo `preference_loss`
    double beta = 0.2;                              ///< β, NeMo `ref_policy_kl_penalty`
    double gt_reward_scale = 1.0;                   ///< η, NeMo `gt_reward_scale`
    double preference_loss_weight = 1.0;            ///< w_p
    double sft_loss_weight = 0.0;                   ///< w_s
    /// Denominator of the means: the global pair count (unset: the local B).
    std::optional<double> num_pairs{};

    /// NeMo-Aligner's `gpt_dpo.yaml` exactly (preference_loss `dpo`).
    static RewardAwareOptions nemo() {
        RewardAwareOptions o;
        o.loss = RewardAwareLoss::DPO;
        return o;
    }
    /// One loss with NeMo's other defaults.
    static RewardAwareOptions of(RewardAwareLoss l, double beta = 0.2, double scale = 1.0) {
        RewardAwareOptions o;
        o.loss = l;
        o.beta = beta;
        o.gt_reward_scale = scale;
        return o;
    }
};

namespace detail {

inline constexpr NameRow<RewardAwareLoss> reward_aware_names[] = {
    {"dpo", RewardAwareLoss::DPO},          {"ipo", RewardAwareLoss::IPO},
    {"rpo_sq", RewardAwareLoss::Sq},        {"rpo_bwd_kl", RewardAwareLoss::BwdKL},
    {"rpo_fwd_kl", RewardAwareLoss::FwdKL},
};
inline constexpr NameTable reward_aware_table{reward_aware_names};

inline bool needs_rewards(RewardAwareLoss l) {
    return l == RewardAwareLoss::Sq || l == RewardAwareLoss::BwdKL || l == RewardAwareLoss::FwdKL;
}

/// ℓ and dℓ/dΔ of one pair.
inline std::pair<double, double> reward_aware_pair(RewardAwareLoss l, double delta, double g,
                                                   double beta) {
    using ::rlpo::log_sigmoid;
    using ::rlpo::sigmoid;
    const double z = beta * delta;
    switch (l) {
        case RewardAwareLoss::DPO: return {-log_sigmoid(z), -beta * sigmoid(-z)};
        case RewardAwareLoss::IPO: {
            const double e = delta - 1.0 / (2.0 * beta);
            return {e * e, 2 * e};
        }
        case RewardAwareLoss::Sq: {
            const double e = z - g;
            return {e * e, 2 * beta * e};
        }
        case RewardAwareLoss::BwdKL: {
            const double la = log_sigmoid(g), lna = log_sigmoid(-g);
            const double lb = log_sigmoid(z), lnb = log_sigmoid(-z);
            const double l_ = std::exp(la) * (la - lb) + std::exp(lna) * (lna - lnb);
            // = β·(σ(z) − σ(g)), written without the cancellation of σ(z) − σ(g) near 1
            return {l_, beta * (sigmoid(-g) * sigmoid(z) - sigmoid(g) * sigmoid(-z))};
        }
        case RewardAwareLoss::FwdKL: {
            const double la = log_sigmoid(g), lna = log_sigmoid(-g);
            const double lb = log_sigmoid(z), lnb = log_sigmoid(-z);
            const double sb = std::exp(lb), snb = std::exp(lnb);
            const double l_ = sb * (lb - la) + snb * (lnb - lna);
            return {l_, beta * sb * snb * (z - g)};
        }
    }
    return {0.0, 0.0};
}

}  // namespace detail

/// NeMo's name of a loss.
inline const char* to_string(RewardAwareLoss l) { return detail::reward_aware_table.name_of(l); }

/// Parse NeMo-Aligner's `preference_loss`; unknown names throw listing every valid name.
inline RewardAwareLoss parse_reward_aware_loss(const std::string& name) {
    return detail::reward_aware_table.parse("preference::parse_reward_aware_loss",
                                            "reward-aware preference loss", name);
}

/// NeMo-Aligner's preference loss (see the file comment): value, gradient w.r.t. the policy
/// log-probs as a `[2, B]` matrix (row 0 chosen, row 1 rejected) and NeMo's metrics. The
/// ground-truth rewards are read by the `rpo_*` losses (`dpo` and `ipo` accept empty vectors).
template <class D1, class D2, class D3, class D4, class D5, class D6>
Result<::rlpo::detail::scalar_t<D1>> reward_aware_po_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps,
    const Eigen::MatrixBase<D3>& ref_chosen_logps, const Eigen::MatrixBase<D4>& ref_rejected_logps,
    const Eigen::MatrixBase<D5>& chosen_rewards, const Eigen::MatrixBase<D6>& rejected_rewards,
    const RewardAwareOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<D1>;
    constexpr const char* fn = "preference::reward_aware_po_loss";
    const detail::FourLogps four = detail::read_four(fn, policy_chosen_logps, policy_rejected_logps,
                                                     ref_chosen_logps, ref_rejected_logps);
    const Index B = four.B;
    const std::vector<double>&pc = four.pc, &pr = four.pr, &rc = four.rc, &rr = four.rr;
    const bool use_rewards = detail::needs_rewards(opts.loss);
    std::vector<double> gc, gr;
    // dpo / ipo: the rewards may be empty (not read); otherwise B entries each
    if (use_rewards || chosen_rewards.size() != 0 || rejected_rewards.size() != 0) {
        if (use_rewards && chosen_rewards.size() == 0 && rejected_rewards.size() == 0 && B > 0)
            ::rlpo::detail::fail(fn, "chosen_rewards: preference loss '", to_string(opts.loss),
                                 "' fits the ground-truth reward margin: pass the rewards (", B,
                                 " entries each)");
        gc = four.read("chosen_rewards", chosen_rewards);
        gr = four.read("rejected_rewards", rejected_rewards);
    }
    ::rlpo::detail::check_positive(fn, "beta", opts.beta);
    ::rlpo::detail::check_finite_param(fn, "gt_reward_scale", opts.gt_reward_scale);
    ::rlpo::detail::check_finite_param(fn, "preference_loss_weight", opts.preference_loss_weight);
    ::rlpo::detail::check_finite_param(fn, "sft_loss_weight", opts.sft_loss_weight);
    RLPO_CHECK(opts.preference_loss_weight != 0 || opts.sft_loss_weight != 0, fn,
               "preference_loss_weight and sft_loss_weight: cannot both be 0 (as NeMo-Aligner)");
    if (opts.num_pairs) ::rlpo::detail::check_positive(fn, "num_pairs", *opts.num_pairs);
    switch (opts.loss) {
        case RewardAwareLoss::DPO:
        case RewardAwareLoss::IPO:
        case RewardAwareLoss::Sq:
        case RewardAwareLoss::BwdKL:
        case RewardAwareLoss::FwdKL: break;
        default:
            ::rlpo::detail::fail(fn, "loss: invalid RewardAwareLoss value ",
                                 static_cast<int>(opts.loss));
    }

    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, 2, B);
    const double n = opts.num_pairs ? *opts.num_pairs : static_cast<double>(B);
    const double wp = opts.preference_loss_weight, ws = opts.sft_loss_weight;
    double pref = 0.0, sft = 0.0, acc = 0.0, s_c = 0.0, s_r = 0.0;
    for (Index i = 0; i < B; ++i) {
        const std::size_t k = static_cast<std::size_t>(i);
        const double uc = pc[k] - rc[k], ur = pr[k] - rr[k];
        const double gd = use_rewards ? opts.gt_reward_scale * (gc[k] - gr[k]) : 0.0;
        const auto [l, d] = detail::reward_aware_pair(opts.loss, uc - ur, gd, opts.beta);
        pref += l;
        sft -= pc[k];
        detail::put_finite(fn, g, 0, i, (wp * d - ws) / n);
        detail::put_finite(fn, g, 1, i, -wp * d / n);
        acc += uc > ur ? 1.0 : 0.0;
        s_c += uc;
        s_r += ur;
    }
    const double pref_loss = B > 0 ? pref / n : 0.0, sft_loss = B > 0 ? sft / n : 0.0;
    const double total = wp * pref_loss + ws * sft_loss;
    res.value = g.coef() * total;

    const double nb = static_cast<double>(B);
    res.metrics.set("loss", total);
    res.metrics.set("preference_loss", pref_loss);
    res.metrics.set("sft_loss", sft_loss);
    res.metrics.add("acc", acc, nb);
    res.metrics.add("rewards_chosen_mean", s_c, nb);
    res.metrics.add("rewards_rejected_mean", s_r, nb);
    res.metrics.add("rewards_all_mean", s_c + s_r, 2 * nb);
    double ss = 0.0;
    const double mean_all = B > 0 ? (s_c + s_r) / (2 * nb) : 0.0;
    for (std::size_t k = 0; k < pc.size(); ++k) {
        const double a = pc[k] - rc[k] - mean_all, b = pr[k] - rr[k] - mean_all;
        ss += a * a + b * b;
    }
    res.metrics.set("rewards_all_std", B > 0 ? std::sqrt(ss / (2 * nb - 1)) : 0.0);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
