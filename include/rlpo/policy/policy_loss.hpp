#pragma once
/// \file
/// One entry point for every policy-gradient surrogate: a variant enum, an options struct that
/// holds each variant's options, a parser for the names verl and TRL configs use, and
/// `policy_loss(...)`, which dispatches to the surrogate with one uniform signature.
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
///
/// Also accepted: `reinforce` (= `gpg`), `gmpo` (= `geo_mean`), `gspo_token` (GSPO, token level).
/// Clip-Cov's random selection is seeded by `clip_cov.seed`: a trainer that wants a fresh draw
/// per step sets it (e.g. from the step number) before the call.
/// TRL's `grpo` / `bnpo` / `dr_grpo` / `dapo` select the PPO clip surrogate; the aggregation
/// they also imply is parsed separately by `rlpo::parse_aggregation`. An unknown name throws
/// `rlpo::invalid_argument` listing every valid name.
///
/// `make_policy_loss(name, anchor)` fills the chosen variant's options with the anchor's preset
/// (`Anchor::Verl`, the default because the names are verl's registry names; `Anchor::TRL`;
/// `Anchor::Paper` for the papers' defaults). The optional `is_weights` (truncated IS weights,
/// policy/corrections.hpp) multiply every variant's per-token loss; for `Vanilla` they are
/// applied by scaling the advantages (exact because the weights are ≥ 0 and PPO's per-token loss
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
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/policy/reinforce.hpp>
#include <rlpo/policy/sapo.hpp>

#include <string>

namespace rlpo::policy {

enum class PolicyLoss {
    Vanilla,
    GPG,
    GSPO,
    CISPO,
    SAPO,
    GeoMean,
    ClipCov,
    KLCov,
    DPPOTV,
    DPPOKL,
    DRO
};

/// Whose defaults `make_policy_loss` applies to the chosen variant.
enum class Anchor { Paper, Verl, TRL };

/// The variant and the options of every variant (only the chosen one is read).
struct PolicyLossOptions {
    PolicyLoss loss = PolicyLoss::Vanilla;
    PPOClipOptions vanilla{};
    GSPOOptions gspo{};
    CISPOOptions cispo{};
    SAPOOptions sapo{};
    GMPOOptions geo_mean{};
    ClipCovOptions clip_cov{};
    KLCovOptions kl_cov{};
    DPPOOptions dppo_tv = DPPOOptions::tv();
    DPPOOptions dppo_kl = DPPOOptions::kl();
    DROOptions dro{};
};

namespace detail {
/// Every accepted spelling; the first row of a variant is its verl registry name.
inline constexpr NameRow<PolicyLoss> policy_loss_names[] = {
    {"vanilla", PolicyLoss::Vanilla},  {"grpo", PolicyLoss::Vanilla},
    {"bnpo", PolicyLoss::Vanilla},     {"dr_grpo", PolicyLoss::Vanilla},
    {"dapo", PolicyLoss::Vanilla},     {"gpg", PolicyLoss::GPG},
    {"reinforce", PolicyLoss::GPG},    {"gspo", PolicyLoss::GSPO},
    {"gspo_token", PolicyLoss::GSPO},  {"cispo", PolicyLoss::CISPO},
    {"sapo", PolicyLoss::SAPO},        {"dppo_tv", PolicyLoss::DPPOTV},
    {"dppo_kl", PolicyLoss::DPPOKL},   {"dro", PolicyLoss::DRO},
    {"geo_mean", PolicyLoss::GeoMean}, {"gmpo", PolicyLoss::GeoMean},
    {"clip_cov", PolicyLoss::ClipCov}, {"kl_cov", PolicyLoss::KLCov},
};
inline constexpr NameTable policy_loss_table{policy_loss_names};
}  // namespace detail

/// verl's registry name of a variant.
inline const char* to_string(PolicyLoss l) { return detail::policy_loss_table.name_of(l); }

/// Parse a verl `loss_mode` / TRL `loss_type` name; unknown names throw with the valid list.
inline PolicyLoss parse_policy_loss(const std::string& name) {
    return detail::policy_loss_table.parse("policy::parse_policy_loss", "policy loss", name);
}

/// Options for the named variant with the anchor's preset applied to it.
inline PolicyLossOptions make_policy_loss(const std::string& name, Anchor anchor = Anchor::Verl) {
    PolicyLossOptions o;
    o.loss = parse_policy_loss(name);
    const bool trl_name = name == "grpo" || name == "bnpo" || name == "dr_grpo" || name == "dapo";
    if (trl_name) anchor = Anchor::TRL;
    switch (anchor) {
        case Anchor::Paper: break;
        case Anchor::Verl:
            o.vanilla = PPOClipOptions::verl();
            o.gspo = GSPOOptions::verl();
            o.cispo = CISPOOptions::verl();
            o.geo_mean = GMPOOptions::verl();
            break;
        case Anchor::TRL:
            o.vanilla = PPOClipOptions::trl();
            o.gspo = GSPOOptions::trl();
            o.cispo = CISPOOptions::trl();
            o.sapo = SAPOOptions::trl();
            break;
    }
    if (name == "gspo_token") o.gspo.level = GSPOLevel::Token;
    return o;
}

/// The chosen surrogate's loss, gradient w.r.t. `logp` and metrics. All inputs `[B, T]`;
/// `old_logp` is not read by `GPG`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> policy_loss(
    const PolicyLossOptions& opts, const Eigen::MatrixBase<DL>& logp,
    const Eigen::MatrixBase<DO>& old_logp, const Eigen::MatrixBase<DA>& advantages,
    const Eigen::MatrixBase<DM>& mask, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    switch (opts.loss) {
        case PolicyLoss::Vanilla: {
            if (!is_weights)
                return ppo_clip(logp, old_logp, advantages, mask, opts.vanilla, norm, out);
            const ConstMatRef<S> m(mask.derived()), A(advantages.derived());
            ::rlpo::detail::check_same_shape("policy::policy_loss", "advantages", A, "logp",
                                             logp.derived());
            ::rlpo::detail::check_same_shape("policy::policy_loss", "mask", m, "logp",
                                             logp.derived());
            detail::check_weights("policy::policy_loss", is_weights, m);
            const Mat<S> wa = (m.array() != S(0)).select(A.array() * is_weights->array(), S(0));
            return ppo_clip(logp, old_logp, wa, mask, opts.vanilla, norm, out);
        }
        case PolicyLoss::GPG: return reinforce(logp, advantages, mask, norm, out, is_weights);
        case PolicyLoss::GSPO:
            return gspo(logp, old_logp, advantages, mask, opts.gspo, norm, out, is_weights);
        case PolicyLoss::CISPO:
            return cispo(logp, old_logp, advantages, mask, opts.cispo, norm, out, is_weights);
        case PolicyLoss::SAPO:
            return sapo(logp, old_logp, advantages, mask, opts.sapo, norm, out, is_weights);
        case PolicyLoss::GeoMean:
            return gmpo(logp, old_logp, advantages, mask, opts.geo_mean, norm, out, is_weights);
        case PolicyLoss::ClipCov:
            return clip_cov(logp, old_logp, advantages, mask, opts.clip_cov, norm, out, is_weights);
        case PolicyLoss::KLCov:
            return kl_cov(logp, old_logp, advantages, mask, opts.kl_cov, norm, out, is_weights);
        case PolicyLoss::DPPOTV:
            return dppo(logp, old_logp, advantages, mask, opts.dppo_tv, norm, out, is_weights);
        case PolicyLoss::DPPOKL:
            return dppo(logp, old_logp, advantages, mask, opts.dppo_kl, norm, out, is_weights);
        case PolicyLoss::DRO:
            return dro(logp, old_logp, advantages, mask, opts.dro, norm, out, is_weights);
    }
    ::rlpo::detail::fail("policy::policy_loss", "loss: invalid PolicyLoss value ",
                         static_cast<int>(opts.loss));
}

}  // namespace rlpo::policy
