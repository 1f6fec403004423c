// NeMo-Aligner's reward-aware preference optimisation (dpo, ipo, rpo_sq, rpo_bwd_kl,
// rpo_fwd_kl + SFT term), four ways.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/preference/dpo.hpp>
#include <rlpo/preference/reward_aware.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::preference::reward_aware_po_loss;
using rlpo::preference::RewardAwareLoss;
using rlpo::preference::RewardAwareOptions;
using Vec = Eigen::VectorXd;

const std::vector<RewardAwareLoss>& all_losses() {
    static const std::vector<RewardAwareLoss> v{RewardAwareLoss::DPO, RewardAwareLoss::IPO,
                                                RewardAwareLoss::Sq, RewardAwareLoss::BwdKL,
                                                RewardAwareLoss::FwdKL};
    return v;
}

struct Rewards {
    Vec chosen, rejected;
};
struct Data {
    Vec pc, pr, rc, rr;
    Rewards gt;
};
Data make_data(std::uint64_t seed, Index B, double spread, double reward_spread) {
    rlpo::testing::Generator gen(seed);
    Data d;
    for (Vec* v : {&d.pc, &d.pr, &d.rc, &d.rr, &d.gt.chosen, &d.gt.rejected}) v->resize(B);
    for (Index i = 0; i < B; ++i) {
        d.rc(i) = -gen.uniform(5.0, 80.0);
        d.rr(i) = -gen.uniform(5.0, 80.0);
        d.pc(i) = d.rc(i) + gen.uniform(-spread, spread);
        d.pr(i) = d.rr(i) + gen.uniform(-spread, spread);
        d.gt.chosen(i) = gen.uniform(-reward_spread, reward_spread);
        d.gt.rejected(i) = gen.uniform(-reward_spread, reward_spread);
    }
    return d;
}

Mat<double> stacked(const Data& d) {
    Mat<double> x(2, d.pc.size());
    x.row(0) = d.pc.transpose();
    x.row(1) = d.pr.transpose();
    return x;
}

}  // namespace

TEST_CASE("reward_aware_po: gradient equals central finite differences",
          "[preference][reward_aware][fd]") {
    std::uint64_t seed = 5;
    for (RewardAwareLoss l : all_losses())
        for (double beta : {0.2, 1.5})
            for (double spread : {2.0, 20.0}) {
                INFO(rlpo::preference::to_string(l) << " beta " << beta << " spread " << spread);
                const Data d = make_data(seed++, 8, spread, 3.0);
                RewardAwareOptions o = RewardAwareOptions::of(l, beta, 0.7);
                o.sft_loss_weight = 0.3;
                o.preference_loss_weight = 0.9;
                if (seed % 2 == 0) o.num_pairs = 12.0;
                const auto r =
                    reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected, o);
                REQUIRE(r.grad.rows() == 2);
                REQUIRE(r.grad.cols() == 8);
                rlpo_test::require_fd_gradient(
                    [&](const Mat<double>& x) {
                        const Vec c = x.row(0).transpose(), q = x.row(1).transpose();
                        return reward_aware_po_loss(c, q, d.rc, d.rr, d.gt.chosen, d.gt.rejected, o,
                                                    rlpo::no_grad<double>())
                            .value;
                    },
                    stacked(d), r.grad);
            }
}

TEMPLATE_TEST_CASE("reward_aware_po: agrees with the PyTorch autograd reference (NeMo's formulas)",
                   "[preference][reward_aware][torch]", float, double) {
    using S = TestType;
    using V = Eigen::Matrix<S, Eigen::Dynamic, 1>;
    rlpo_test::TorchReference ref("preference_seed",
                                  std::string("reward_aware_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        V pc, pr, rc, rr;
        Rewards gt;
        RewardAwareOptions o;
    };
    std::vector<Run> runs;
    const auto add = [&](const Data& d, const RewardAwareOptions& o) {
        Run r{d.pc.cast<S>(), d.pr.cast<S>(), d.rc.cast<S>(), d.rr.cast<S>(), d.gt, o};
        auto& c = ref.add<S>("reward_aware");
        c.in("policy_chosen_logps", Mat<double>(r.pc.template cast<double>()))
            .in("policy_rejected_logps", Mat<double>(r.pr.template cast<double>()))
            .in("ref_chosen_logps", Mat<double>(r.rc.template cast<double>()))
            .in("ref_rejected_logps", Mat<double>(r.rr.template cast<double>()))
            .in("rewards_chosen", Mat<double>(d.gt.chosen))
            .in("rewards_rejected", Mat<double>(d.gt.rejected));
        c.p("beta", o.beta)
            .p("gt_reward_scale", o.gt_reward_scale)
            .p("preference_loss_weight", o.preference_loss_weight)
            .p("sft_loss_weight", o.sft_loss_weight);
        if (o.num_pairs) c.p("num_pairs", *o.num_pairs);
        c.s("loss", rlpo::preference::to_string(o.loss));
        runs.push_back(std::move(r));
    };
    std::uint64_t seed = 300;
    add(make_data(seed++, 10, 3.0, 2.0), RewardAwareOptions{});
    add(make_data(seed++, 10, 3.0, 2.0), RewardAwareOptions::nemo());
    for (RewardAwareLoss l : all_losses())
        for (double beta : {0.2, 0.05}) {
            RewardAwareOptions o = RewardAwareOptions::of(l, beta, 1.0);
            add(make_data(seed++, 9, 5.0, 3.0), o);
            // adversarial: saturated sigmoids (|z| up to ~60, |g| up to ~80), a tie (Δ = 0)
            o.gt_reward_scale = 4.0;
            o.sft_loss_weight = 0.5;
            o.num_pairs = 20.0;
            Data a = make_data(seed++, 9, 300.0, 20.0);
            a.pc(0) = a.rc(0);
            a.pr(0) = a.rr(0);
            add(a, o);
        }
    ref.run();
    const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k << " (" << rlpo::preference::to_string(r.o.loss) << ", beta " << r.o.beta
                     << ", scale " << r.o.gt_reward_scale << ")");
        const auto res =
            reward_aware_po_loss(r.pc, r.pr, r.rc, r.rr, r.gt.chosen, r.gt.rejected, r.o);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        const double grad_err = rlpo_test::max_rel_err(res.grad, ref.out(k, "grad"));
        INFO("gradient: max relative error " << grad_err << "\nrlpo\n"
                                             << res.grad << "\ntorch\n"
                                             << ref.out(k, "grad"));
        CHECK(grad_err < tol);
        for (const char* m : {"loss", "preference_loss", "sft_loss", "acc", "rewards_chosen_mean",
                              "rewards_rejected_mean", "rewards_all_mean", "rewards_all_std"}) {
            INFO(m);
            CHECK(rlpo_test::rel_err(res.metrics[m], ref.scalar(k, m), 1e-9) < tol);
        }
    }
}

TEST_CASE("reward_aware_po: properties", "[preference][reward_aware][properties]") {
    const Data d = make_data(11, 10, 6.0, 2.0);
    SECTION("policy margin β·Δ = reward margin η·(r_c − r_r): rpo_sq and both KLs are 0, flat") {
        const double beta = 0.25, scale = 0.5;
        Vec pc = d.pc;
        for (Index i = 0; i < 10; ++i)
            pc(i) =
                d.rc(i) + (d.pr(i) - d.rr(i)) + scale * (d.gt.chosen(i) - d.gt.rejected(i)) / beta;
        for (RewardAwareLoss l :
             {RewardAwareLoss::Sq, RewardAwareLoss::BwdKL, RewardAwareLoss::FwdKL}) {
            INFO(rlpo::preference::to_string(l));
            const auto r = reward_aware_po_loss(pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected,
                                                RewardAwareOptions::of(l, beta, scale));
            CHECK(std::abs(r.value) < 1e-14);
            CHECK(r.grad.cwiseAbs().maxCoeff() < 1e-14);
        }
    }
    SECTION("the KLs are ≥ 0 and rpo_bwd_kl with a decisive reward (σ(g) = 1) is DPO") {
        for (RewardAwareLoss l : {RewardAwareLoss::BwdKL, RewardAwareLoss::FwdKL}) {
            const auto r = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected,
                                                RewardAwareOptions::of(l, 0.3, 2.0));
            CHECK(r.value > 0);
        }
        Rewards big{Vec::Constant(10, 1000.0), Vec::Zero(10)};
        const auto b = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, big.chosen, big.rejected,
                                            RewardAwareOptions::of(RewardAwareLoss::BwdKL, 0.3));
        const auto p = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, Vec(), Vec(),
                                            RewardAwareOptions::of(RewardAwareLoss::DPO, 0.3));
        CHECK(b.value == Approx(p.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(b.grad, p.grad) < 1e-14);
    }
    SECTION("dpo and ipo are TRL's sigmoid and (unnormalised) ipo of dpo_loss") {
        using rlpo::preference::DPOLoss;
        using rlpo::preference::DPOOptions;
        const auto a = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, Vec(), Vec(),
                                            RewardAwareOptions::of(RewardAwareLoss::DPO, 0.4));
        const auto b = rlpo::preference::dpo_loss(d.pc, d.pr, d.rc, d.rr,
                                                  DPOOptions::of(DPOLoss::Sigmoid, 0.4));
        CHECK(a.value == Approx(b.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(a.grad, b.grad) < 1e-14);
        const rlpo::preference::CompletionLengths ones{Vec::Ones(10), Vec::Ones(10)};
        const auto c = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, Vec(), Vec(),
                                            RewardAwareOptions::of(RewardAwareLoss::IPO, 0.4));
        const auto e = rlpo::preference::dpo_loss(d.pc, d.pr, d.rc, d.rr,
                                                  DPOOptions::of(DPOLoss::IPO, 0.4), {}, ones);
        CHECK(c.value == Approx(e.value).epsilon(1e-14));
        CHECK(rlpo_test::max_rel_err(c.grad, e.grad) < 1e-14);
        CHECK(a.metrics["acc"] == b.metrics["rewards/accuracies"]);
    }
    SECTION("the SFT term alone: −mean π_c, gradient −1/N on the chosen, 0 on the rejected") {
        RewardAwareOptions o = RewardAwareOptions::nemo();
        o.preference_loss_weight = 0.0;
        o.sft_loss_weight = 1.0;
        const auto r = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, Vec(), Vec(), o);
        CHECK(r.value == Approx(-d.pc.mean()).epsilon(1e-14));
        CHECK(r.metrics["sft_loss"] == Approx(-d.pc.mean()).epsilon(1e-14));
        CHECK(r.metrics["preference_loss"] > 0);  // logged even with weight 0, as NeMo
        for (Index i = 0; i < 10; ++i) {
            CHECK(r.grad(0, i) == Approx(-0.1).epsilon(1e-15));
            CHECK(r.grad(1, i) == 0.0);
        }
    }
    SECTION("metrics: NeMo's unscaled rewards, their unbiased std, strict accuracy") {
        Vec pc(2), pr(2), rc(2), rr(2);
        pc << -1, -4;
        pr << -3, -2;
        rc << 0, 0;
        rr << 0, 0;  // rewards: chosen {−1, −4}, rejected {−3, −2}
        const auto r =
            reward_aware_po_loss(pc, pr, rc, rr, Vec(), Vec(), RewardAwareOptions::nemo());
        CHECK(r.metrics["acc"] == 0.5);
        CHECK(r.metrics["rewards_chosen_mean"] == -2.5);
        CHECK(r.metrics["rewards_rejected_mean"] == -2.5);
        CHECK(r.metrics["rewards_all_mean"] == -2.5);
        CHECK(r.metrics["rewards_all_std"] == Approx(std::sqrt(5.0 / 3.0)).epsilon(1e-15));
        CHECK(r.metrics["loss"] == Approx(r.value).epsilon(1e-15));
    }
    SECTION("micro-batches with a global pair count add up to the whole batch") {
        for (RewardAwareLoss l : all_losses()) {
            INFO(rlpo::preference::to_string(l));
            RewardAwareOptions o = RewardAwareOptions::of(l, 0.3, 0.8);
            o.sft_loss_weight = 0.2;
            const auto whole =
                reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected, o);
            o.num_pairs = 10.0;
            rlpo_test::require_example_invariance(whole, 10, [&](Index r0, Index n) {
                const Rewards gt{d.gt.chosen.segment(r0, n), d.gt.rejected.segment(r0, n)};
                return reward_aware_po_loss(d.pc.segment(r0, n), d.pr.segment(r0, n),
                                            d.rc.segment(r0, n), d.rr.segment(r0, n), gt.chosen,
                                            gt.rejected, o);
            });
        }
    }
    SECTION("GradientOut: write_to, add_to, no_grad; float inputs") {
        const auto own = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected);
        Mat<double> buf = Mat<double>::Constant(2, 10, 1.0);
        const auto w = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected, {},
                                            rlpo::write_to<double>(buf, 3.0));
        CHECK(w.grad.size() == 0);
        CHECK(w.value == Approx(3 * own.value).epsilon(1e-15));
        CHECK(rlpo_test::max_rel_err(buf, Mat<double>(3 * own.grad)) < 1e-15);
        (void)reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected, {},
                                   rlpo::add_to<double>(buf, -3.0));
        CHECK(buf.cwiseAbs().maxCoeff() < 1e-15);
        const auto n = reward_aware_po_loss(d.pc, d.pr, d.rc, d.rr, d.gt.chosen, d.gt.rejected, {},
                                            rlpo::no_grad<double>());
        CHECK(n.value == own.value);
        const auto f =
            reward_aware_po_loss(d.pc.cast<float>(), d.pr.cast<float>(), d.rc.cast<float>(),
                                 d.rr.cast<float>(), d.gt.chosen, d.gt.rejected);
        CHECK(f.value == Approx(own.value).epsilon(1e-4));
    }
    SECTION("names: NeMo's preference_loss values parse and print") {
        for (RewardAwareLoss l : all_losses())
            CHECK(rlpo::preference::parse_reward_aware_loss(rlpo::preference::to_string(l)) == l);
        CHECK(std::string(rlpo::preference::to_string(RewardAwareLoss::BwdKL)) == "rpo_bwd_kl");
    }
    SECTION("B = 0: value 0, empty gradient, metrics 0") {
        const Vec e(0);
        const auto r = reward_aware_po_loss(e, e, e, e, e, e);
        CHECK(r.value == 0.0);
        CHECK(r.grad.size() == 0);
        CHECK(r.metrics["acc"] == 0.0);
        CHECK(r.metrics["rewards_all_std"] == 0.0);
    }
}

TEST_CASE("reward_aware_po: bad input gives the documented error",
          "[preference][reward_aware][bad-input]") {
    const Vec x = Vec::Constant(3, -5.0), y = Vec::Constant(4, -5.0);
    const Rewards gt{Vec::Zero(3), Vec::Ones(3)};
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, y, x, x, gt.chosen, gt.rejected),
                                    "preference::reward_aware_po_loss(): policy_rejected_logps: "
                                    "expected 3 entries (same as policy_chosen_logps), given 4");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, y, x, gt.chosen, gt.rejected),
                                    "ref_chosen_logps: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, y, gt.chosen, gt.rejected),
                                    "ref_rejected_logps: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        reward_aware_po_loss(x, x, x, x, Vec(Vec::Zero(3)), Vec(Vec::Zero(2))),
        "rejected_rewards: expected 3 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        reward_aware_po_loss(x, x, x, x, Vec(Vec::Zero(2)), Vec(), RewardAwareOptions::nemo()),
        "chosen_rewards: expected 3 entries");
    const Mat<double> m = Mat<double>::Zero(2, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(m, x, x, x, gt.chosen, gt.rejected),
                                    "policy_chosen_logps: expected a vector");
    Vec bad = x;
    bad(0) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, bad, x, x, gt.chosen, gt.rejected),
                                    "policy_rejected_logps: NaN at pair 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, x, bad, x),
                                    "chosen_rewards: NaN at pair 0");
    bad(0) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, bad, gt.chosen, gt.rejected),
                                    "ref_rejected_logps: non-finite value inf at pair 0");
    for (RewardAwareLoss l : {RewardAwareLoss::Sq, RewardAwareLoss::BwdKL, RewardAwareLoss::FwdKL})
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            reward_aware_po_loss(x, x, x, x, Vec(), Vec(), RewardAwareOptions::of(l)),
            "fits the ground-truth reward margin: pass the rewards (3 entries each)");
    RewardAwareOptions o;
    o.beta = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, x, gt.chosen, gt.rejected, o),
                                    "preference::reward_aware_po_loss(): beta: must be > 0");
    o = {};
    o.gt_reward_scale = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, x, gt.chosen, gt.rejected, o),
                                    "gt_reward_scale: must be finite");
    o = {};
    o.preference_loss_weight = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, x, gt.chosen, gt.rejected, o),
                                    "preference_loss_weight: must be finite");
    o = {};
    o.sft_loss_weight = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, x, gt.chosen, gt.rejected, o),
                                    "sft_loss_weight: must be finite");
    o = {};
    o.preference_loss_weight = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, x, gt.chosen, gt.rejected, o),
                                    "cannot both be 0");
    o = {};
    o.num_pairs = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(reward_aware_po_loss(x, x, x, x, gt.chosen, gt.rejected, o),
                                    "num_pairs: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::preference::parse_reward_aware_loss("rpo"),
                                    "preference::parse_reward_aware_loss(): name: unknown "
                                    "reward-aware preference loss 'rpo'; valid names: dpo, ipo, "
                                    "rpo_sq, rpo_bwd_kl, rpo_fwd_kl");
}
