// The surrogate factory: names, presets, dispatch, weights.
#include "policy/policy_support.hpp"

#include <rlpo/policy/policy_loss.hpp>

using namespace policy_test;
using rlpo::policy::Anchor;
using rlpo::policy::PolicyLoss;
using rlpo::policy::PolicyLossOptions;
namespace rp = rlpo::policy;

TEST_CASE("policy_loss: verl and TRL names parse; unknown names list the valid ones",
          "[policy][policy_loss]") {
    CHECK(rp::parse_policy_loss("vanilla") == PolicyLoss::Vanilla);
    CHECK(rp::parse_policy_loss("grpo") == PolicyLoss::Vanilla);
    CHECK(rp::parse_policy_loss("dapo") == PolicyLoss::Vanilla);
    CHECK(rp::parse_policy_loss("dr_grpo") == PolicyLoss::Vanilla);
    CHECK(rp::parse_policy_loss("bnpo") == PolicyLoss::Vanilla);
    CHECK(rp::parse_policy_loss("gpg") == PolicyLoss::GPG);
    CHECK(rp::parse_policy_loss("reinforce") == PolicyLoss::GPG);
    CHECK(rp::parse_policy_loss("gspo") == PolicyLoss::GSPO);
    CHECK(rp::parse_policy_loss("cispo") == PolicyLoss::CISPO);
    CHECK(rp::parse_policy_loss("sapo") == PolicyLoss::SAPO);
    CHECK(rp::parse_policy_loss("dppo_tv") == PolicyLoss::DPPOTV);
    CHECK(rp::parse_policy_loss("dppo_kl") == PolicyLoss::DPPOKL);
    CHECK(rp::parse_policy_loss("dro") == PolicyLoss::DRO);
    CHECK(rp::parse_policy_loss("geo_mean") == PolicyLoss::GeoMean);
    CHECK(rp::parse_policy_loss("gmpo") == PolicyLoss::GeoMean);
    CHECK(rp::parse_policy_loss("clip_cov") == PolicyLoss::ClipCov);
    CHECK(rp::parse_policy_loss("kl_cov") == PolicyLoss::KLCov);
    for (PolicyLoss l : {PolicyLoss::Vanilla, PolicyLoss::GPG, PolicyLoss::GSPO, PolicyLoss::CISPO,
                         PolicyLoss::SAPO, PolicyLoss::DPPOTV, PolicyLoss::DPPOKL, PolicyLoss::DRO,
                         PolicyLoss::GeoMean, PolicyLoss::ClipCov, PolicyLoss::KLCov})
        CHECK(rp::parse_policy_loss(rp::to_string(l)) == l);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::parse_policy_loss("ppo2"),
                                    "policy::parse_policy_loss(): name: unknown policy loss "
                                    "'ppo2'; valid names: vanilla, grpo");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::parse_policy_loss("GSPO"), "cispo");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::make_policy_loss(""), "unknown policy loss ''");
}

TEST_CASE("policy_loss: presets follow the anchor", "[policy][policy_loss]") {
    const auto v = rp::make_policy_loss("gspo");
    CHECK(v.loss == PolicyLoss::GSPO);
    CHECK(v.gspo.level == rp::GSPOLevel::Token);  // verl's gspo is the token form
    CHECK(v.vanilla.dual_clip.has_value());       // verl: dual-clip c = 3
    const auto t = rp::make_policy_loss("cispo", Anchor::TRL);
    CHECK(t.cispo.bound == rp::CISPOBound::Cap);
    CHECK(t.cispo.cap == 5.0);
    const auto g =
        rp::make_policy_loss("grpo");  // a TRL name: TRL's PPO clip (no dual-clip, no clamp)
    CHECK(!g.vanilla.dual_clip.has_value());
    CHECK(std::isinf(g.vanilla.log_ratio_clamp));
    const auto p = rp::make_policy_loss("gspo", Anchor::Paper);
    CHECK(p.gspo.level == rp::GSPOLevel::Sequence);
    CHECK(p.gspo.clip_low == 3e-4);
    CHECK(rp::make_policy_loss("gspo_token", Anchor::Paper).gspo.level == rp::GSPOLevel::Token);
    // DPPO: verl reads δ from the actor's clip_ratio_low/high (0.2) and the truncation from
    // clip_ratio_c (3.0) in verl/trainer/config/actor/actor.yaml; the paper runs 0.15 / 0.05, 20.
    for (const char* name : {"dppo_tv", "dppo_kl"}) {
        const auto d = rp::make_policy_loss(name);
        const rp::DPPOOptions& o = d.loss == PolicyLoss::DPPOTV ? d.dppo_tv : d.dppo_kl;
        CHECK(o.delta_low == 0.2);
        CHECK(o.delta_high == 0.2);
        CHECK(o.ratio_cap == 3.0);
        const auto q = rp::make_policy_loss(name, Anchor::Paper);
        const rp::DPPOOptions& op = q.loss == PolicyLoss::DPPOTV ? q.dppo_tv : q.dppo_kl;
        CHECK(op.delta_high == (q.loss == PolicyLoss::DPPOTV ? 0.15 : 0.05));
        CHECK(op.ratio_cap == 20.0);
    }
}

TEST_CASE("policy_loss: dispatch equals the direct call of each surrogate",
          "[policy][policy_loss]") {
    const Batch b = spread_batch(40);
    rlpo::Normalizer n;
    n.mode = Aggregation::SeqMeanTokenSum;
    rlpo::policy::TokenWeights<double> w;
    w.emplace(b.w);
    const auto same = [](const rlpo::Result<double>& a, const rlpo::Result<double>& c) {
        CHECK(a.value == c.value);
        CHECK(a.grad == c.grad);
        REQUIRE(a.metrics.size() == c.metrics.size());
        for (const auto& e : c.metrics) CHECK(a.metrics[e.first] == e.second.value());
    };
    PolicyLossOptions o = rp::make_policy_loss("vanilla");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n),
         rp::ppo_clip(b.logp, b.old, b.adv, b.mask, o.vanilla, n));
    o = rp::make_policy_loss("gpg");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::reinforce(b.logp, b.adv, b.mask, n, {}, w));
    o = rp::make_policy_loss("gspo");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::gspo(b.logp, b.old, b.adv, b.mask, o.gspo, n, {}, w));
    o = rp::make_policy_loss("cispo", Anchor::TRL);
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::cispo(b.logp, b.old, b.adv, b.mask, o.cispo, n, {}, w));
    o = rp::make_policy_loss("sapo");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::sapo(b.logp, b.old, b.adv, b.mask, o.sapo, n, {}, w));
    o = rp::make_policy_loss("dppo_tv");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::dppo(b.logp, b.old, b.adv, b.mask, rp::DPPOOptions::verl_tv(), n, {}, w));
    o = rp::make_policy_loss("dppo_kl");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::dppo(b.logp, b.old, b.adv, b.mask, rp::DPPOOptions::verl_kl(), n, {}, w));
    o = rp::make_policy_loss("dro");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::dro(b.logp, b.old, b.adv, b.mask, {}, n, {}, w));
    o = rp::make_policy_loss("geo_mean");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::gmpo(b.logp, b.old, b.adv, b.mask, rp::GMPOOptions::verl(), n, {}, w));
    o = rp::make_policy_loss("clip_cov");
    o.clip_cov.ratio = 0.05;
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::clip_cov(b.logp, b.old, b.adv, b.mask, o.clip_cov, n, {}, w));
    o = rp::make_policy_loss("kl_cov");
    same(rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w),
         rp::kl_cov(b.logp, b.old, b.adv, b.mask, {}, n, {}, w));
    // GradientOut is honoured: add into a buffer with a coefficient.
    Mat<double> g = Mat<double>::Ones(b.logp.rows(), b.logp.cols());
    o = rp::make_policy_loss("cispo");
    const auto direct = rp::cispo(b.logp, b.old, b.adv, b.mask, o.cispo, n);
    const auto r = rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, rlpo::add_to(g, 0.5));
    CHECK(r.value == Approx(0.5 * direct.value));
    CHECK(rlpo_test::max_rel_err(
              g, Mat<double>(Mat<double>::Ones(g.rows(), g.cols()) + 0.5 * direct.grad)) < 1e-15);
}

TEST_CASE("policy_loss: weighted vanilla equals the weighted PPO loss",
          "[policy][policy_loss][fd]") {
    const Batch b = spread_batch(41);
    for (Aggregation mode : rlpo_test::all_modes()) {
        const rlpo::Normalizer n = norm_for(mode, 1);
        const PolicyLossOptions o = rp::make_policy_loss("vanilla");
        rlpo::policy::TokenWeights<double> w;
        w.emplace(b.w);
        const auto r = rp::policy_loss(o, b.logp, b.old, b.adv, b.mask, n, {}, w);
        const auto near_kink = [&](Index k) {
            const double lr = b.logp.data()[k] - b.old.data()[k], q = std::exp(lr);
            return std::abs(q - 0.8) < 1e-4 || std::abs(q - 1.2) < 1e-4 ||
                   std::abs(q - 3.0) < 1e-4 || std::abs(std::abs(lr) - 20.0) < 1e-4;
        };
        rlpo_test::require_fd_gradient(
            [&](const Mat<double>& x) {
                return rp::policy_loss(o, x, b.old, b.adv, b.mask, n, rlpo::no_grad<double>(), w)
                    .value;
            },
            b.logp, r.grad, 1e-6, 1e-10, near_kink);
    }
}

TEMPLATE_TEST_CASE("policy_loss: weighted vanilla agrees with the PyTorch reference",
                   "[policy][policy_loss][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy",
                                  std::string("policy_loss_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Mat<S> logp, old, adv, mask, w;
        rlpo::Normalizer norm;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 900;
    const PolicyLossOptions o = rp::make_policy_loss("vanilla");
    for (Aggregation mode : rlpo_test::all_modes()) {
        const Batch b = spread_batch(seed++);
        Run r{b.logp.cast<S>(), b.old.cast<S>(), b.adv.cast<S>(),
              b.mask.cast<S>(), b.w.cast<S>(),   norm_for(mode, seed)};
        r.mask(2, 3) = 0;
        r.w(2, 3) = std::numeric_limits<S>::quiet_NaN();
        auto& c = ref.add<S>("weighted_ppo_clip");
        c.in("logp", r.logp)
            .in("old_logp", r.old)
            .in("advantages", r.adv)
            .in("mask", r.mask)
            .in("is_weights", r.w);
        c.p("clip_low", o.vanilla.clip_low).p("clip_high", o.vanilla.clip_high);
        c.p("log_ratio_clamp", o.vanilla.log_ratio_clamp).p("dual_clip", *o.vanilla.dual_clip);
        put_norm(c, r.norm);
        runs.push_back(std::move(r));
    }
    ref.run();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        rlpo::policy::TokenWeights<S> w;
        w.emplace(r.w);
        const auto res = rp::policy_loss(o, r.logp, r.old, r.adv, r.mask, r.norm, {}, w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < rlpo_test::ref_tol<S>());
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < rlpo_test::ref_tol<S>());
        CHECK(rlpo_test::rel_err(res.metrics["ppo_kl"], ref.scalar(k, "ppo_kl"), 1e-12) <
              rlpo_test::ref_tol<S>());
    }
}

TEST_CASE("policy_loss: bad input gives the documented error", "[policy][policy_loss][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    PolicyLossOptions o;
    rlpo::policy::TokenWeights<double> w;
    w.emplace(y);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::policy_loss(o, x, x, x, m, {}, {}, w),
                                    "is_weights: expected shape");
    Mat<double> neg = m;
    neg(1, 1) = -0.5;
    w.emplace(neg);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::policy_loss(o, x, x, x, m, {}, {}, w),
                                    "is_weights: entries under a non-zero mask");
    o.loss = static_cast<PolicyLoss>(99);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::policy_loss(o, x, x, x, m), "invalid PolicyLoss value 99");
    o = rp::make_policy_loss("gspo");
    o.gspo.clip_low = -1;  // the chosen variant's options are validated by it
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::policy_loss(o, x, x, x, m),
                                    "policy::gspo(): clip_low: must be > 0");
}

TEST_CASE("policy_loss: GPG checks old_logp's shape", "[policy][policy_loss][bad_input]") {
    // GPG does not read old_logp's values, but the uniform signature checks its shape: a
    // wrong-shaped buffer is a caller's bug
    const Mat<double> x = Mat<double>::Constant(2, 3, -1.0), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    const auto o = rlpo::policy::make_policy_loss("gpg");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::policy::policy_loss(o, x, y, x, m),
        "policy::policy_loss(): old_logp: expected shape [2, 3] (same as logp), given [2, 4]");
    // its values are not read (NaN allowed)
    const Mat<double> nan = Mat<double>::Constant(2, 3, std::numeric_limits<double>::quiet_NaN());
    CHECK(std::isfinite(rlpo::policy::policy_loss(o, x, nan, x, m).value));
}
