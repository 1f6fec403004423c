// TRL's loss types end to end: every GRPOConfig loss_type selects TRL's surrogate and preset,
// importance_sampling_level="sequence" is reachable from the TRL names, and with
// rlpo::trl_normalizer the value equals TRL's loss written here from GRPOTrainer._compute_loss.
#include "policy/policy_support.hpp"

#include <rlpo/policy/policy_loss.hpp>

#include <algorithm>
#include <string>

using namespace policy_test;
using rlpo::policy::Anchor;
using rlpo::policy::ImportanceSampling;
using rlpo::policy::PolicyLoss;
namespace rp = rlpo::policy;

namespace {
/// TRL's loss (one micro-batch, one process) for the PPO-clip loss types, written from
/// _compute_loss: token level coef_1 = exp(lr) per token, sequence level coef_1 =
/// exp(Σ_t lr·m / max(Σ_t m, 1)) per row; per_token_loss = −min(coef_1·A, clip(coef_1)·A) with
/// the row's advantage (row-constant here); then the loss type's divisor.
double trl_ppo_loss(const std::string& type, bool sequence, const Batch& b, double eps_low,
                    double eps_high, double max_len) {
    const Index B = b.logp.rows(), T = b.logp.cols();
    Mat<double> L = Mat<double>::Zero(B, T);
    for (Index i = 0; i < B; ++i) {
        double len = 0, sum = 0;
        for (Index t = 0; t < T; ++t)
            if (b.mask(i, t) != 0) {
                len += b.mask(i, t);
                sum += b.mask(i, t) * (b.logp(i, t) - b.old(i, t));
            }
        const double seq_coef = std::exp(sum / std::max(len, 1.0));
        for (Index t = 0; t < T; ++t) {
            if (b.mask(i, t) == 0) continue;
            const double c1 = sequence ? seq_coef : std::exp(b.logp(i, t) - b.old(i, t));
            const double c2 = std::clamp(c1, 1 - eps_low, 1 + eps_high);
            const double a = b.adv(i, t);
            L(i, t) = -std::min(c1 * a, c2 * a);
        }
    }
    double total = 0, tokens = 0, row_means = 0;
    for (Index i = 0; i < B; ++i) {
        double row = 0, len = 0;
        for (Index t = 0; t < T; ++t) {
            row += L(i, t) * b.mask(i, t);
            len += b.mask(i, t);
        }
        total += row;
        tokens += len;
        row_means += row / std::max(len, 1.0);
    }
    if (type == "grpo") return row_means / static_cast<double>(B);
    if (type == "bnpo" || type == "dapo") return total / std::max(tokens, 1.0);
    if (type == "dr_grpo") return total / (static_cast<double>(B) * max_len);
    throw std::logic_error("no formula for " + type);
}

Batch trl_batch(std::uint64_t seed) {
    Batch b = spread_batch(seed, 8, 10, 0.05, false, true);  // TRL: one advantage per row
    b.mask.row(3).setZero();                                 // an empty row counts in B
    return b;
}
}  // namespace

TEST_CASE("trl names: every TRL loss_type takes TRL's surrogate and preset", "[policy][trl]") {
    for (const char* name : {"grpo", "bnpo", "dr_grpo", "dapo"}) {
        const auto o = rp::make_policy_loss(name, Anchor::TRL);
        CHECK(o.loss == PolicyLoss::Vanilla);
        CHECK(!o.vanilla.dual_clip.has_value());
        CHECK(std::isinf(o.vanilla.log_ratio_clamp));
    }
    const auto c = rp::make_policy_loss("cispo", Anchor::TRL);
    CHECK(c.loss == PolicyLoss::CISPO);
    CHECK(c.cispo.bound == rp::CISPOBound::Cap);
    CHECK(c.cispo.cap == 5.0);
    const auto s = rp::make_policy_loss("sapo", Anchor::TRL);
    CHECK(s.loss == PolicyLoss::SAPO);
    CHECK(std::isinf(s.sapo.log_ratio_clamp));
    CHECK(rp::make_policy_loss("luspo", Anchor::TRL).loss == PolicyLoss::LUSPO);
    CHECK(rp::make_policy_loss("vespo", Anchor::TRL).loss == PolicyLoss::VESPO);
    // TRL's GSPO preset: sequence level, no cap, the loss type's aggregation, the docs' ε
    const auto g = rp::GSPOOptions::trl();
    CHECK(g.level == rp::GSPOLevel::Sequence);
    CHECK(std::isinf(g.log_ratio_cap));
    CHECK(!g.aggregation.has_value());
    CHECK(g.clip_low == 3e-4);
    CHECK(g.clip_high == 4e-4);
}

TEST_CASE("trl names: importance_sampling_level='sequence' from the TRL name", "[policy][trl]") {
    for (const char* name : {"grpo", "bnpo", "dr_grpo", "dapo"}) {
        for (Anchor anchor : {Anchor::TRL, Anchor::Verl, Anchor::Paper}) {
            const auto o = rp::make_policy_loss(name, anchor, ImportanceSampling::Sequence);
            CHECK(o.loss == PolicyLoss::GSPO);
            CHECK(o.gspo.level == rp::GSPOLevel::Sequence);
            CHECK(std::isinf(o.gspo.log_ratio_cap));
            CHECK(!o.gspo.aggregation.has_value());
        }
    }
    CHECK(rp::make_policy_loss("gspo", Anchor::Verl, ImportanceSampling::Sequence).gspo.level ==
          rp::GSPOLevel::Sequence);
    CHECK(rp::make_policy_loss("luspo", Anchor::TRL, ImportanceSampling::Sequence).loss ==
          PolicyLoss::LUSPO);
    CHECK(rp::make_policy_loss("grpo", Anchor::TRL, ImportanceSampling::Token).loss ==
          PolicyLoss::Vanilla);
    for (const char* name : {"cispo", "sapo", "vespo", "vanilla", "gpg"})
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            rp::make_policy_loss(name, Anchor::TRL, ImportanceSampling::Sequence),
            "policy::make_policy_loss(): level: sequence-level importance sampling is "
            "reproduced for grpo, bnpo, dr_grpo, dapo, gspo, luspo; given '" +
                std::string(name) + "'");
}

TEST_CASE("trl names: name + trl_normalizer give TRL's loss value", "[policy][trl]") {
    const double max_len = 16.0;
    rlpo::TRLNormalizerOptions t;
    t.max_completion_length = max_len;
    std::uint64_t seed = 70;
    for (const char* name : {"grpo", "bnpo", "dr_grpo", "dapo"})
        for (const bool sequence : {false, true}) {
            INFO(name << (sequence ? " sequence" : " token"));
            const Batch b = trl_batch(seed++);
            auto o = rp::make_policy_loss(
                name, Anchor::TRL,
                sequence ? ImportanceSampling::Sequence : ImportanceSampling::Token);
            // a clip range that both clips and keeps some rows / tokens
            const double lo = 0.04, hi = 0.06;
            o.vanilla.clip_low = o.gspo.clip_low = lo;
            o.vanilla.clip_high = o.gspo.clip_high = hi;
            const auto r = rp::policy_loss(o, b.logp, b.old, b.adv, b.mask,
                                           rlpo::trl_normalizer(name, b.mask, t));
            // the two levels differ on this batch, so the check tells them apart
            CHECK(trl_ppo_loss(name, true, b, lo, hi, max_len) !=
                  Approx(trl_ppo_loss(name, false, b, lo, hi, max_len)).epsilon(1e-6));
            CHECK(r.value == Approx(trl_ppo_loss(name, sequence, b, lo, hi, max_len))
                                 .epsilon(1e-12)
                                 .margin(1e-15));
        }
}
