#pragma once
/// \file
/// One entry point for every policy-gradient surrogate: a variant enum, an options struct that
/// holds each variant's options, a parser for the names verl and TRL configs use, and
/// `policy_loss(...)`, which dispatches to the surrogate with one uniform signature. All four
/// are generated from one registry, `RLPO_POLICY_LOSSES` below: one row per surrogate.
///
/// **Adding a surrogate** (docs/policy.md has the full checklist): its header (options with
/// presets, a kernel run by policy/detail/driver.hpp, a one-line public function with the
/// uniform signature `f(logp, old_logp, advantages, mask, opts, norm, out, is_weights)`), its
/// test, its reference formula in tests/reference/policy.py, its include here and ONE registry
/// row.
///
/// ```cpp
/// auto opts = rlpo::policy::make_policy_loss(cfg.loss_mode);          // "vanilla", "gspo", …
/// opts.cispo.clip_high = 0.28;                                         // tune the chosen variant
/// auto r = rlpo::policy::policy_loss(opts, logp, old_logp, adv, mask, norm, rlpo::write_to(g));
/// ```
///
/// | enum       | verl `loss_mode` | TRL `loss_type`               | surrogate (header)              |
/// |------------|------------------|-------------------------------|---------------------------------|
/// | `Vanilla`  | `vanilla`        | `grpo`, `bnpo`, `dr_grpo`, `dapo` | PPO clip (ppo_clip.hpp)     |
/// | `GPG`      | `gpg`            | —                             | −A·logp (reinforce.hpp)         |
/// | `GSPO`     | `gspo`           | importance_sampling_level="sequence" | GSPO (gspo.hpp)          |
/// | `CISPO`    | `cispo`          | `cispo`                       | CISPO (cispo.hpp)               |
/// | `SAPO`     | `sapo`           | `sapo`                        | SAPO (sapo.hpp)                 |
/// | `GeoMean`  | `geo_mean`       | —                             | GMPO (gmpo.hpp)                 |
/// | `ClipCov`  | `clip_cov`       | —                             | Clip-Cov (cov.hpp)              |
/// | `KLCov`    | `kl_cov`         | —                             | KL-Cov (cov.hpp)                |
/// | `DPPOTV`   | `dppo_tv`        | —                             | DPPO binary-TV (dppo.hpp)       |
/// | `DPPOKL`   | `dppo_kl`        | —                             | DPPO binary-KL (dppo.hpp)       |
/// | `DRO`      | `dro`            | —                             | DRO (dro.hpp)                   |
/// | `LUSPO`    | —                | `luspo`                       | LUSPO (luspo.hpp)               |
/// | `VESPO`    | —                | `vespo`                       | VESPO (vespo.hpp)               |
///
/// Also accepted: `reinforce` (= `gpg`), `gmpo` (= `geo_mean`), `gspo_token` (GSPO, token level).
/// Clip-Cov's random selection is seeded by `clip_cov.seed`: a trainer that wants a fresh draw
/// per step sets it (e.g. from the step number) before the call.
/// TRL's `grpo` / `bnpo` / `dr_grpo` / `dapo` select the PPO clip surrogate (GSPO with
/// `ImportanceSampling::Sequence`); every TRL loss type's aggregation, with TRL's counts, comes
/// from `rlpo::trl_normalizer(loss_type, mask, …)` (its mode alone: `rlpo::parse_aggregation`).
/// With `Anchor::TRL` each TRL name takes TRL's surrogate: `cispo` the cap form, `sapo`, `luspo`,
/// `vespo` their TRL presets. An unknown name throws
/// `rlpo::invalid_argument` listing every valid name.
///
/// `make_policy_loss(name, anchor)` fills the chosen variant's options with the anchor's preset
/// (`Anchor::Verl`, the default because the names are verl's registry names; `Anchor::TRL`;
/// `Anchor::Paper` for the papers' defaults). The optional `is_weights` (truncated IS weights,
/// policy/corrections.hpp) multiply every variant's per-token loss; for `Vanilla` they are
/// applied by scaling the advantages as the kernel loads them (exact because the weights are ≥ 0 and PPO's per-token loss
/// is positively homogeneous in A; tokens with weight 0 then count as unclipped in
/// `pg_clipfrac`).

#include <rlpo/core/names.hpp>
#include <rlpo/policy/cispo.hpp>
#include <rlpo/policy/cov.hpp>
#include <rlpo/policy/detail/common.hpp>
#include <rlpo/policy/dppo.hpp>
#include <rlpo/policy/dro.hpp>
#include <rlpo/policy/gmpo.hpp>
#include <rlpo/policy/gspo.hpp>
#include <rlpo/policy/luspo.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/policy/reinforce.hpp>
#include <rlpo/policy/sapo.hpp>
#include <rlpo/policy/vespo.hpp>

#include <string>
#include <vector>

namespace rlpo::policy {

namespace detail {
/// `Vanilla` through the uniform signature: is_weights scale the advantages per packet inside
/// the PPO clip kernel (exact: the weights are ≥ 0 and PPO's per-token loss is positively
/// homogeneous in A). No weighted copy of the advantages is made.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> ppo_clip_weighted(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const PPOClipOptions& opts, const Normalizer& norm,
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out,
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights) {
    return run_tokens_simd<PPOClipKernel>(logp, old_logp, advantages, mask, opts, norm, out,
                                          is_weights);
}
/// `GPG` through the uniform signature. old_logp's values are not read, but its shape is
/// checked like every variant's: a wrong-shaped buffer is a caller's bug, and the registry's
/// uniform signature promises the same shape rules for every variant.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> reinforce_uniform(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const ReinforceOptions&, const Normalizer& norm,
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out,
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights) {
    ::rlpo::detail::check_same_shape("policy::policy_loss", "old_logp", old_logp.derived(), "logp",
                                     logp.derived());
    return reinforce(logp, advantages, mask, norm, out, is_weights);
}
}  // namespace detail

/// The registry. One row per surrogate, in `PolicyLoss` order:
///
///     X(Enum, member, Options, paper, verl, trl, run, names...)
///
/// * `Enum`: its `PolicyLoss` value; `member`: its `PolicyLossOptions` member, of type `Options`;
/// * `paper`, `verl`, `trl`: the options `make_policy_loss` gives it for `Anchor::Paper` (also
///   the member's default), `Anchor::Verl` and `Anchor::TRL` — the defaults where an anchor has
///   no preset of its own;
/// * `run`: the function called with `(logp, old_logp, advantages, mask, opts.member, norm, out,
///   is_weights)`;
/// * `names`: its spellings for `parse_policy_loss`, the canonical (verl registry) name first.
///
/// Metric names are each kernel's (`report`, documented in each surrogate's header).
// clang-format off
#define RLPO_POLICY_LOSSES(X)                                                                   \
    X(Vanilla, vanilla, PPOClipOptions, PPOClipOptions{}, PPOClipOptions::verl(),               \
      PPOClipOptions::trl(), detail::ppo_clip_weighted, "vanilla", "grpo", "bnpo", "dr_grpo",   \
      "dapo")                                                                                   \
    X(GPG, gpg, ReinforceOptions, ReinforceOptions{}, ReinforceOptions{}, ReinforceOptions{},   \
      detail::reinforce_uniform, "gpg", "reinforce")                                            \
    X(GSPO, gspo, GSPOOptions, GSPOOptions{}, GSPOOptions::verl(), GSPOOptions::trl(), gspo,    \
      "gspo", "gspo_token")                                                                     \
    X(CISPO, cispo, CISPOOptions, CISPOOptions{}, CISPOOptions::verl(), CISPOOptions::trl(),    \
      cispo, "cispo")                                                                           \
    X(SAPO, sapo, SAPOOptions, SAPOOptions{}, SAPOOptions::verl(), SAPOOptions::trl(), sapo,    \
      "sapo")                                                                                   \
    X(GeoMean, geo_mean, GMPOOptions, GMPOOptions{}, GMPOOptions::verl(), GMPOOptions{}, gmpo,  \
      "geo_mean", "gmpo")                                                                       \
    X(ClipCov, clip_cov, ClipCovOptions, ClipCovOptions{}, ClipCovOptions{}, ClipCovOptions{},  \
      clip_cov, "clip_cov")                                                                     \
    X(KLCov, kl_cov, KLCovOptions, KLCovOptions{}, KLCovOptions{}, KLCovOptions{}, kl_cov,      \
      "kl_cov")                                                                                 \
    X(DPPOTV, dppo_tv, DPPOOptions, DPPOOptions::tv(), DPPOOptions::verl_tv(),                  \
      DPPOOptions::tv(), dppo, "dppo_tv")                                                       \
    X(DPPOKL, dppo_kl, DPPOOptions, DPPOOptions::kl(), DPPOOptions::verl_kl(),                  \
      DPPOOptions::kl(), dppo, "dppo_kl")                                                       \
    X(DRO, dro, DROOptions, DROOptions{}, DROOptions{}, DROOptions{}, dro, "dro")              \
    X(LUSPO, luspo, LUSPOOptions, LUSPOOptions{}, LUSPOOptions{}, LUSPOOptions::trl(), luspo,   \
      "luspo")                                                                                    \
    X(VESPO, vespo, VESPOOptions, VESPOOptions{}, VESPOOptions{}, VESPOOptions::trl(), vespo,   \
      "vespo")
// clang-format on

#define RLPO_POLICY_LOSS_ENUM(E, member, O, paper, verl, trl, run, ...) E,
enum class PolicyLoss { RLPO_POLICY_LOSSES(RLPO_POLICY_LOSS_ENUM) };
#undef RLPO_POLICY_LOSS_ENUM

/// Whose defaults `make_policy_loss` applies to the chosen variant.
enum class Anchor { Paper, Verl, TRL };

/// The variant and the options of every variant (only the chosen one is read).
struct PolicyLossOptions {
    PolicyLoss loss = PolicyLoss::Vanilla;
#define RLPO_POLICY_LOSS_MEMBER(E, member, O, paper, verl, trl, run, ...) O member = paper;
    RLPO_POLICY_LOSSES(RLPO_POLICY_LOSS_MEMBER)
#undef RLPO_POLICY_LOSS_MEMBER
};

namespace detail {
/// Every accepted spelling, built once from the registry rows (in row order, each row's
/// canonical name first).
inline const NameTable<PolicyLoss>& policy_loss_table() {
    static const std::vector<NameRow<PolicyLoss>> rows = [] {
        std::vector<NameRow<PolicyLoss>> v;
#define RLPO_POLICY_LOSS_NAMES(E, member, O, paper, verl, trl, run, ...) \
    for (const char* n : {__VA_ARGS__}) v.push_back({n, PolicyLoss::E});
        RLPO_POLICY_LOSSES(RLPO_POLICY_LOSS_NAMES)
#undef RLPO_POLICY_LOSS_NAMES
        return v;
    }();
    static const NameTable<PolicyLoss> table(rows.data(), rows.size());
    return table;
}
}  // namespace detail

/// verl's registry name of a variant.
inline const char* to_string(PolicyLoss l) { return detail::policy_loss_table().name_of(l); }

/// Parse a verl `loss_mode` / TRL `loss_type` name; unknown names throw with the valid list.
inline PolicyLoss parse_policy_loss(const std::string& name) {
    return detail::policy_loss_table().parse("policy::parse_policy_loss", "policy loss", name);
}

/// TRL's GRPOConfig `importance_sampling_level`: one ratio per token (the default) or one per
/// sequence, exp(masked mean of the row's log-ratios), as GSPO.
enum class ImportanceSampling { Token, Sequence };

/// Options for the named variant with the anchor's preset applied to it (and to every other
/// variant's options). TRL's `grpo`/`bnpo`/`dr_grpo`/`dapo` always take TRL's preset;
/// `gspo_token` selects GSPO's token level.
///
/// `level = ImportanceSampling::Sequence` is TRL's `importance_sampling_level="sequence"`:
/// * `grpo`, `bnpo`, `dr_grpo`, `dapo` select GSPO with `GSPOOptions::trl()` — the sequence ratio
///   with TRL's clipping (PPO's min of the clipped and unclipped terms, no cap) under the
///   caller's Normalizer (`rlpo::trl_normalizer(name, mask, …)` gives TRL's), and ε_l = 3e-4,
///   ε_h = 4e-4, the values TRL's docs recommend for GSPO (GRPOConfig's bare default ε = 0.2
///   for both is `GSPOOptions::trl(0.2, 0.2)`: set `opts.gspo.clip_low/high`);
/// * `gspo` selects GSPO's sequence level (whatever the anchor), `luspo` is sequence level
///   already;
/// * any other name throws `rlpo::invalid_argument` (TRL's cispo, sapo and vespo with sequence
///   ratios, which TRL warns against or rejects, and TRL's `delta` two-sided clip on sequence
///   ratios are not reproduced).
inline PolicyLossOptions make_policy_loss(const std::string& name, Anchor anchor = Anchor::Verl,
                                          ImportanceSampling level = ImportanceSampling::Token) {
    PolicyLossOptions o;
    o.loss = parse_policy_loss(name);
    const bool trl_name = name == "grpo" || name == "bnpo" || name == "dr_grpo" || name == "dapo";
    if (trl_name) anchor = Anchor::TRL;
    switch (anchor) {
        case Anchor::Paper: break;  // the members' defaults are the paper presets
        case Anchor::Verl:
#define RLPO_POLICY_LOSS_VERL(E, member, O, paper, verl, trl, run, ...) o.member = verl;
            RLPO_POLICY_LOSSES(RLPO_POLICY_LOSS_VERL)
#undef RLPO_POLICY_LOSS_VERL
            break;
        case Anchor::TRL:
#define RLPO_POLICY_LOSS_TRL(E, member, O, paper, verl, trl, run, ...) o.member = trl;
            RLPO_POLICY_LOSSES(RLPO_POLICY_LOSS_TRL)
#undef RLPO_POLICY_LOSS_TRL
            break;
    }
    if (name == "gspo_token") o.gspo.level = GSPOLevel::Token;
    if (level == ImportanceSampling::Sequence) {
        if (trl_name) {
            o.loss = PolicyLoss::GSPO;
            o.gspo = GSPOOptions::trl();
        } else if (name == "gspo") {
            o.gspo.level = GSPOLevel::Sequence;
        } else if (name != "luspo") {
            ::rlpo::detail::fail("policy::make_policy_loss",
                                 "level: sequence-level importance sampling is reproduced for "
                                 "grpo, bnpo, dr_grpo, dapo, gspo, luspo; given '",
                                 name, "'");
        }
    }
    return o;
}

/// The chosen surrogate's loss, gradient w.r.t. `logp` and metrics. All inputs `[B, T]`;
/// `old_logp`'s values are not read by `GPG`, but its shape is checked for every variant.
/// Allocates: what the chosen surrogate allocates (its header's doc comment); `is_weights`
/// are read in place by every variant.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> policy_loss(
    const PolicyLossOptions& opts, const Eigen::MatrixBase<DL>& logp,
    const Eigen::MatrixBase<DO>& old_logp, const Eigen::MatrixBase<DA>& advantages,
    const Eigen::MatrixBase<DM>& mask, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    switch (opts.loss) {
#define RLPO_POLICY_LOSS_CASE(E, member, O, paper, verl, trl, run, ...) \
    case PolicyLoss::E:                                                 \
        return run(logp, old_logp, advantages, mask, opts.member, norm, out, is_weights);
        RLPO_POLICY_LOSSES(RLPO_POLICY_LOSS_CASE)
#undef RLPO_POLICY_LOSS_CASE
    }
    ::rlpo::detail::fail("policy::policy_loss", "loss: invalid PolicyLoss value ",
                         static_cast<int>(opts.loss));
}

}  // namespace rlpo::policy
