// Reward shaping rules: PyTorch reference, closed forms / properties, bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include "rollout/common.hpp"

#include <rlpo/rollout/length_shaping.hpp>
#include <rlpo/rollout/shaping.hpp>

#include <cmath>
#include <functional>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
using rlpo::rollout::Groups;
using rlpo::rollout::OverlongOptions;
namespace rr = rlpo::rollout;
namespace rt = rlpo::testing;
constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();

TEMPLATE_TEST_CASE("shaping rules agree with the PyTorch reference", "[rollout][shaping][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("rollout", std::string("shape_") + (sizeof(S) == 4 ? "f" : "d"));
    std::vector<std::function<void(std::size_t)>> checks;
    const double tol = rlpo_test::ref_tol<S>();
    rt::Generator gen(900);
    // DAPO overlong penalty: lengths across all three zones and the boundaries
    for (const auto& o : {OverlongOptions::dapo(100, 20), OverlongOptions::verl(100, 20, 0.5),
                          OverlongOptions::dapo(64, 64)}) {
        Vec<S> L(12);
        for (Index k = 0; k < 10; ++k)
            L(k) = static_cast<S>(std::floor(gen.uniform(0, o.max_length * 1.2)));
        L(10) = static_cast<S>(o.max_length - o.cache_length);
        L(11) = static_cast<S>(o.max_length);
        auto& c = tr.add<S>("overlong");
        c.in("lengths", Mat<S>(L)).p("max_length", o.max_length).p("cache_length", o.cache_length);
        c.p("penalty_factor", o.penalty_factor).s("clip", o.clip_beyond_max ? "yes" : "no");
        checks.push_back([&tr, L, o, tol](std::size_t i) {
            const Vec<S> p = rr::overlong_penalty(L, o);
            CHECK(rlpo_test::max_rel_err(Mat<double>(p.template cast<double>()),
                                         tr.out(i, "penalty")) < tol);
        });
    }
    auto cmp = [&tr, tol](std::size_t i, const char* name, const Mat<double>& x) {
        INFO(name);
        CHECK(rlpo_test::max_rel_err(x, tr.out(i, name)) < tol);
    };
    auto vm = [](const auto& v) { return Mat<double>(v.template cast<double>()); };
    std::uint64_t seed = 950;
    // Kimi length reward, GRPO-λ, DOT, STCR, truncation on grouped batches with binary correctness
    for (int rep = 0; rep < 3; ++rep) {
        const auto b = rollout_test::grouped_batch(seed++);
        rt::Generator g2(seed++);
        Vec<S> L(b.n()), c(b.n()), adv(b.n()), trunc(b.n());
        for (Index i = 0; i < b.n(); ++i) {
            L(i) = static_cast<S>(g2.integer(5, 60));
            c(i) = g2.uniform() < 0.6 ? S(1) : S(0);
            adv(i) = static_cast<S>(g2.normal());
            trunc(i) = g2.uniform() < 0.3 ? S(1) : S(0);
        }
        // an all-correct group with one long outlier, and an all-equal-length group
        const Index g4 = b.groups.begin(4), n4 = b.groups.size(4);
        c.segment(g4, n4).setOnes();
        L.segment(g4, n4).setConstant(S(20));
        L(g4) = S(400);
        const Index g5 = b.groups.begin(5);
        L.segment(g5, b.groups.size(5)).setConstant(S(33));
        const Vec<S> sc = b.scores.cast<S>();
        const Vec<S> lenr = (c.array() + S(0.3) * L.array() / S(60)).matrix();
        const double frac = rep == 0 ? 0.0 : (rep == 1 ? 0.34 : 1.0);
        rr::DOTOptions dot;
        if (rep == 2) dot.k_sigma = 1.0, dot.outlier_score = -1.0;
        const double base = rep == 2 ? 1.001 : 1.00001;
        const double factor = rep * 0.1;
        auto& c1 = tr.add<S>("kimi");
        c1.in("lengths", Mat<S>(L)).in("correct", Mat<S>(c)).in("group_ids", b.ids);
        checks.push_back(
            [=](std::size_t i) { cmp(i, "reward", vm(rr::kimi_length_reward(L, c, b.groups))); });
        auto& c2 = tr.add<S>("grpo_lambda");
        c2.in("correct", Mat<S>(c))
            .in("length_rewards", Mat<S>(lenr))
            .in("group_ids", b.ids)
            .p("top_fraction", frac);
        checks.push_back([=](std::size_t i) {
            cmp(i, "reward", vm(rr::grpo_lambda_rewards(c, lenr, b.groups, frac)));
        });
        const double alpha = rep == 1 ? 0.6 : 0.25 * rep;
        auto& c2b = tr.add<S>("grpo_lambda_length");
        c2b.in("correct", Mat<S>(c))
            .in("lengths", Mat<S>(L))
            .in("group_ids", b.ids)
            .p("alpha", alpha);
        checks.push_back([=](std::size_t i) {
            cmp(i, "reward", vm(rr::grpo_lambda_length_rewards(c, L, b.groups, alpha)));
        });
        rr::DOTTruncationOptions dt;
        if (rep == 1) dt.std_multiplier = 0.5, dt.min_truncation_margin = 0.1;
        if (rep == 2)
            dt.success_threshold = 0.5, dt.std_multiplier = 1.0, dt.min_truncation_margin = 3;
        auto& c2c = tr.add<S>("dot_truncation");
        c2c.in("lengths", Mat<S>(L)).in("correct", Mat<S>(c)).in("group_ids", b.ids);
        c2c.p("success_threshold", dt.success_threshold)
            .p("std_multiplier", dt.std_multiplier)
            .p("min_truncation_margin", dt.min_truncation_margin);
        checks.push_back([=, &tr](std::size_t i) {
            const auto r = rr::dot_truncation(L, c, b.groups, dt);
            cmp(i, "lengths", vm(r.lengths));
            cmp(i, "truncated", vm(r.truncated));
            CHECK(r.metrics["truncation/num_truncated"] == tr.scalar(i, "num_truncated"));
            CHECK(r.metrics["truncation/total_tokens_truncated"] ==
                  tr.scalar(i, "total_tokens_truncated"));
        });
        auto& c3 = tr.add<S>("dot");
        c3.in("scores", Mat<S>(sc))
            .in("lengths", Mat<S>(L))
            .in("correct", Mat<S>(c))
            .in("group_ids", b.ids);
        c3.p("k_sigma", dot.k_sigma).p("outlier_score", dot.outlier_score);
        checks.push_back([=](std::size_t i) {
            cmp(i, "scores", vm(rr::dot_outlier_truncation(sc, L, c, b.groups, dot)));
        });
        auto& c4 = tr.add<S>("stcr");
        c4.in("adv", Mat<S>(adv))
            .in("lengths", Mat<S>(L))
            .in("correct", Mat<S>(c))
            .in("group_ids", b.ids)
            .p("base", base);
        checks.push_back([=](std::size_t i) {
            cmp(i, "adv", vm(rr::stcr_scale_advantages(adv, L, c, b.groups, base)));
        });
        auto& c5 = tr.add<S>("truncation");
        c5.in("rewards", Mat<S>(sc)).in("truncated", Mat<S>(trunc)).p("factor", factor);
        checks.push_back([=](std::size_t i) {
            cmp(i, "rewards", vm(rr::truncation_penalty(sc, trunc, factor)));
        });
    }
    // ARLCP and GRPO-CARE
    for (int rep = 0; rep < 3; ++rep) {
        const auto b = rollout_test::grouped_batch(seed++);
        rt::Generator g2(seed++);
        Vec<S> c(b.n()), refl(b.n()), L(b.n()), acc(b.n()), cons(b.n());
        for (Index i = 0; i < b.n(); ++i) {
            c(i) = g2.uniform() < 0.6 ? S(1) : S(0);
            refl(i) = static_cast<S>(g2.integer(0, 120));  // every tier
            L(i) = static_cast<S>(g2.integer(50, 900));
            acc(i) = g2.uniform() < 0.3 ? S(0) : static_cast<S>(g2.uniform(0.05, 1.0));
            cons(i) = static_cast<S>(g2.uniform(0.2, 0.9));
        }
        const Index g3 = b.groups.begin(3);
        c(g3) = S(1), c(g3 + 1) = S(0);  // group 3 has both correct and wrong responses
        rr::CAREOptions co;
        if (rep == 1) co.margin = 0.0, co.bonus_coef = 1.0;
        auto& c1 = tr.add<S>("arlcp");
        c1.in("correct", Mat<S>(c))
            .in("reflections", Mat<S>(refl))
            .in("lengths", Mat<S>(L))
            .in("group_ids", b.ids);
        checks.push_back(
            [=](std::size_t i) { cmp(i, "reward", vm(rr::arlcp_rewards(c, refl, L, b.groups))); });
        auto& c2 = tr.add<S>("care");
        c2.in("accuracy", Mat<S>(acc)).in("consistency", Mat<S>(cons)).in("group_ids", b.ids);
        c2.p("bonus_coef", co.bonus_coef).p("margin", co.margin);
        checks.push_back([=](std::size_t i) {
            cmp(i, "bonus", vm(rr::care_consistency_bonus(acc, cons, b.groups, co)));
        });
    }
    // reward components with TRL's nansum (NaN components skipped; an all-NaN row scores 0)
    for (int variant = 0; variant < 2; ++variant) {
        rt::Generator g2(seed++);
        Mat<S> R = g2.normal<S>(7, 3);
        R(1, 2) = std::numeric_limits<S>::quiet_NaN();
        R.row(4).setConstant(std::numeric_limits<S>::quiet_NaN());
        const std::vector<double> w =
            variant == 0 ? std::vector<double>{} : std::vector<double>{1.0, 0.25, -2.0};
        auto& c = tr.add<S>("combine");
        c.in("rewards", R);
        if (!w.empty()) c.p("weights", Mat<double>(Eigen::Map<const Mat<double>>(w.data(), 3, 1)));
        checks.push_back([=](std::size_t i) {
            cmp(i, "reward", vm(rr::combine_rewards(R, w, rr::NanScores::AsZero)));
        });
    }
    // ensembles
    for (int mode = 0; mode < 4; ++mode) {
        rt::Generator g2(seed++);
        const Mat<S> R = g2.normal<S>(9, 5);
        rr::EnsembleOptions o =
            mode == 0   ? rr::EnsembleOptions::mean()
            : mode == 1 ? rr::EnsembleOptions::worst_case()
                        : rr::EnsembleOptions::uncertainty_weighted(
                              0.7, mode == 2 ? rr::StdKind::Population : rr::StdKind::Sample);
        auto& c = tr.add<S>("ensemble");
        c.in("rewards", R).s("mode", mode == 0 ? "mean" : mode == 1 ? "wco" : "uwo");
        c.s("variance", mode == 3 ? "sample" : "population").p("lambda", o.uncertainty_coef);
        checks.push_back([=](std::size_t i) { cmp(i, "reward", vm(rr::ensemble_reward(R, o))); });
    }
    // CTRL calibration (with ties) and transforms
    for (auto ties : {rr::CalibrationTies::LessEqual, rr::CalibrationTies::Midrank}) {
        rt::Generator g2(seed++);
        Mat<S> base(8, 6);
        Vec<S> r(8);
        for (Index i = 0; i < 8; ++i) {
            for (Index j = 0; j < 6; ++j) base(i, j) = static_cast<S>(g2.integer(0, 6));
            r(i) = static_cast<S>(g2.integer(-1, 7));
        }
        const double t = 3.5;
        auto& c = tr.add<S>("ctrl");
        c.in("rewards", Mat<S>(r))
            .in("base", base)
            .p("t", t)
            .s("ties", ties == rr::CalibrationTies::LessEqual ? "le" : "mid");
        checks.push_back([=](std::size_t i) {
            const Vec<S> u = rr::ctrl_calibrate(r, base, ties);
            cmp(i, "u", vm(u));
            cmp(i, "bon", vm(rr::ctrl_transform(u, t, rr::CTRLTransform::BestOfN)));
            cmp(i, "won", vm(rr::ctrl_transform(u, t, rr::CTRLTransform::WorstOfN)));
        });
    }
    // KL in reward, every estimator, verl and TRL clamps
    for (auto e : {rlpo::penalties::KLEstimator::K1, rlpo::penalties::KLEstimator::Abs,
                   rlpo::penalties::KLEstimator::K2, rlpo::penalties::KLEstimator::K3})
        for (bool trl : {false, true}) {
            rt::Generator g2(seed++);
            const Index B = 6, T = 8;
            Mat<S> m = g2.mask<S>(B, T, 1, true);
            m.row(0).setOnes();
            const Mat<S> old = g2.logprobs<S>(B, T);
            Mat<S> ref = g2.perturbed<S>(old, 1.5);
            ref(0, 0) = old(0, 0) - S(25);  // beyond the clamps
            Mat<S> sc = g2.normal<S>(B, T);
            for (Index k = 0; k < m.size(); ++k)
                if (m.data()[k] == 0)
                    sc.data()[k] = std::numeric_limits<S>::quiet_NaN();  // never read
            const auto o =
                trl ? rlpo::penalties::KLOptions::trl(e) : rlpo::penalties::KLOptions::verl(e);
            const double beta = 0.05;
            auto& c = tr.add<S>("kl_in_reward");
            c.in("token_scores", sc).in("old_logp", old).in("ref_logp", ref).in("mask", m);
            c.p("beta", beta)
                .p("log_ratio_clamp", o.log_ratio_clamp)
                .p("value_clamp", o.value_clamp);
            c.s("estimator", rlpo::penalties::to_string(e));
            checks.push_back([=, &tr](std::size_t i) {
                const auto res = rr::kl_in_reward(sc, old, ref, m, beta, o);
                cmp(i, "token_rewards", res.rewards.template cast<double>());
                cmp(i, "seq_kl", vm(res.seq_kl));
                CHECK(rlpo_test::rel_err(res.metrics["reward_kl_penalty"],
                                         tr.scalar(i, "reward_kl_penalty")) < tol);
                CHECK(res.metrics["reward_kl_penalty_coeff"] == beta);
            });
        }
    tr.run();
    for (std::size_t i = 0; i < checks.size(); ++i) {
        INFO("case " << i);
        checks[i](i);
    }
}

TEST_CASE("overlong penalty: closed form zones", "[rollout][shaping][properties]") {
    Vec<double> L(6);
    L << 0, 80, 90, 100, 101, 500;
    const Vec<double> p = rr::overlong_penalty(L, OverlongOptions::dapo(100, 20));
    CHECK(p(0) == 0.0);
    CHECK(p(1) == 0.0);
    CHECK(p(2) == Approx(-0.5));
    CHECK(p(3) == Approx(-1.0));
    CHECK(p(4) == -1.0);
    CHECK(p(5) == -1.0);
    const Vec<double> v = rr::overlong_penalty(L, OverlongOptions::verl(100, 20, 2.0));
    CHECK(v(2) == Approx(-1.0));
    CHECK(v(3) == Approx(-2.0));
    CHECK(v(4) == Approx(-2.1));  // verl continues the ramp (its lengths never exceed the cap)
    // monotone non-increasing in the length
    for (Index k = 1; k < 6; ++k) CHECK(p(k) <= p(k - 1));
}

TEST_CASE("shaping rules: closed forms and properties", "[rollout][shaping][properties]") {
    // Kimi: shortest correct +0.5, longest −0.5; wrong answers never positive
    Vec<double> L(4), c(4);
    L << 10, 20, 30, 10;
    c << 1, 1, 1, 0;
    const Vec<double> k = rr::kimi_length_reward(L, c, Groups::equal(4, 4));
    CHECK(k(0) == 0.5);
    CHECK(k(1) == 0.0);
    CHECK(k(2) == -0.5);
    CHECK(k(3) == 0.0);  // wrong and shortest: min(0, 0.5)
    CHECK(rr::kimi_length_reward(Vec<double>::Constant(3, 7.0), c.head(3), Groups::equal(3, 3))
              .isZero(0));
    // GRPO-λ: fraction 0 ⇒ 0/1 correctness everywhere, 1 ⇒ the length rewards everywhere
    const auto b = rollout_test::grouped_batch(31);
    Vec<double> cc(b.n()), lr(b.n());
    for (Index i = 0; i < b.n(); ++i) cc(i) = double(i % 3 != 0), lr(i) = 0.1 * i;
    CHECK(rr::grpo_lambda_rewards(cc, lr, b.groups, 0.0) == cc);
    CHECK(rr::grpo_lambda_rewards(cc, lr, b.groups, 1.0) == lr);
    {
        // GRPO-λ's length reward in closed form: two correct responses of lengths 10 and 30
        // (μ = 20, σ = 10) get 1 − α·σ(∓1); the wrong one 0; a lone correct response, or equal
        // lengths, z = 0 ⇒ 1 − α/2; α = 0 ⇒ 1 for every correct response.
        Vec<double> c7(7), L7(7);
        c7 << 1, 0, 1, /**/ 1, 0, /**/ 1, 1;
        L7 << 10, 99, 30, /**/ 55, 3, /**/ 8, 8;
        const Groups g7 = Groups::from_offsets({0, 3, 5, 7});
        const double a = 0.6, s1 = 1.0 / (1.0 + std::exp(-1.0));
        const Vec<double> r7 = rr::grpo_lambda_length_rewards(c7, L7, g7, a);
        CHECK(r7(0) == Approx(1 - a * (1 - s1)).epsilon(1e-14));
        CHECK(r7(1) == 0.0);
        CHECK(r7(2) == Approx(1 - a * s1).epsilon(1e-14));
        CHECK(r7(3) == Approx(1 - a / 2).epsilon(1e-14));
        CHECK(r7(4) == 0.0);
        CHECK(r7(5) == Approx(1 - a / 2).epsilon(1e-14));
        CHECK(r7(6) == Approx(1 - a / 2).epsilon(1e-14));
        CHECK(rr::grpo_lambda_length_rewards(c7, L7, g7, 0.0) == c7);
        // the default α is 0.6 and the default λ 0.2: of 3 groups, ⌈0.6⌉ = 1 (the most accurate,
        // the last group, accuracy 1) is shaped, the others get their 0/1 correctness
        CHECK(rr::grpo_lambda_length_rewards(c7, L7, g7) == r7);
        const Vec<double> e2e = rr::grpo_lambda(c7, L7, g7);
        Vec<double> want = c7;
        want.tail(2) = r7.tail(2);
        CHECK(e2e == want);
        CHECK(rr::grpo_lambda_rewards(c7, r7, g7) == want);
        rr::GRPOLambdaOptions all;
        all.top_fraction = 1.0;
        all.alpha = 0.3;
        CHECK(rr::grpo_lambda(c7, L7, g7, all) == rr::grpo_lambda_length_rewards(c7, L7, g7, 0.3));
    }
    {
        // DOT, the authors' cut, in closed form: lengths {100, 100, 100, 400}, all correct:
        // μ = 175, sample σ = 150. α = 3: T = 625 ≥ 400, nothing is cut; α = 1: T = 325, 400
        // overshoots by 75 ≥ 32 and is cut to 325; a margin of 100 keeps it; one wrong answer
        // keeps the whole group (threshold 1); the mask loses columns ≥ 325 of that row only.
        Vec<double> L4(4), c4 = Vec<double>::Ones(4);
        L4 << 100, 100, 100, 400;
        const Groups g4 = Groups::equal(4, 4);
        const auto none = rr::dot_truncation(L4, c4, g4);
        CHECK(none.lengths == L4);
        CHECK(none.truncated.isZero(0));
        rr::DOTTruncationOptions o;
        o.std_multiplier = 1.0;
        const auto cut = rr::dot_truncation(L4, c4, g4, o);
        CHECK(cut.lengths(3) == 325.0);
        CHECK(cut.lengths.head(3) == L4.head(3));
        CHECK(cut.truncated(3) == 1.0);
        CHECK(cut.metrics["truncation/total_tokens_truncated"] == 75.0);
        o.min_truncation_margin = 100;
        CHECK(rr::dot_truncation(L4, c4, g4, o).truncated.isZero(0));
        o.min_truncation_margin = 0.1;  // fraction: max(⌊400·0.1⌋, 16) = 40 ≤ 75
        CHECK(rr::dot_truncation(L4, c4, g4, o).truncated(3) == 1.0);
        o.min_truncation_margin = 0.2;  // max(80, 16) = 80 > 75
        CHECK(rr::dot_truncation(L4, c4, g4, o).truncated(3) == 0.0);
        Vec<double> c3 = c4;
        c3(0) = 0;
        o.min_truncation_margin = 32;
        CHECK(rr::dot_truncation(L4, c3, g4, o).truncated.isZero(0));
        o.success_threshold = 0.75;
        CHECK(rr::dot_truncation(L4, c3, g4, o).truncated(3) == 1.0);
        Mat<double> mask = Mat<double>::Ones(4, 410);
        rr::dot_truncate_mask(mask, cut.lengths);
        CHECK(mask.row(3).head(325).sum() == 325.0);
        CHECK(mask.row(3).tail(85).sum() == 0.0);
        CHECK(mask.row(0).sum() == 100.0);  // uncut rows keep their own length
    }
    // DOT: nothing changes outside all-correct groups, and k = ∞-like thresholds change nothing
    Vec<double> s(6), LL(6), c6(6);
    s << 1, 1, 1, 1, 1, 0;
    LL << 10, 11, 12, 100, 10, 500;
    c6 << 1, 1, 1, 1, 1, 0;
    const Groups g6 = Groups::from_offsets({0, 4, 6});
    rr::DOTOptions d;
    d.k_sigma = 1.0;
    const Vec<double> ds = rr::dot_outlier_truncation(s, LL, c6, g6, d);
    CHECK(ds(3) == 0.0);  // 100 > mean 33.25 + 1·σ (38.5)
    CHECK(ds.head(3) == s.head(3));
    CHECK(ds.tail(2) == s.tail(2));  // group with a wrong answer untouched
    d.k_sigma = 3.0;  // a single outlier among 4 can never exceed μ + 3σ (max z-score is √3)
    CHECK(rr::dot_outlier_truncation(s, LL, c6, g6, d) == s);
    // STCR: scale is 1 at Δ ≤ 0, → 2 as Δ → ∞, only for wrong answers
    Vec<double> a(3), L3(3), c3(3);
    a << 1, -1, -1;
    L3 << 100, 50, 1e9;
    c3 << 1, 0, 0;
    const Vec<double> st = rr::stcr_scale_advantages(a, L3, c3, Groups::equal(3, 3));
    CHECK(st(0) == 1);
    CHECK(st(1) == -1);
    CHECK(st(2) == Approx(-2.0).epsilon(1e-12));
    // ensembles: WCO ≤ mean; UWO with λ = 0 is the mean; identical models: UWO = mean = WCO
    rt::Generator gen(5);
    const Mat<double> R = gen.normal(6, 4);
    const Vec<double> mean = rr::ensemble_reward(R, rr::EnsembleOptions::mean());
    CHECK(
        (rr::ensemble_reward(R, rr::EnsembleOptions::worst_case()).array() <= mean.array()).all());
    CHECK((rr::ensemble_reward(
               R, rr::EnsembleOptions::uncertainty_weighted(0.0, rr::StdKind::Sample)) -
           mean)
              .cwiseAbs()
              .maxCoeff() < 1e-15);
    const Mat<double> same = R.col(0).replicate(1, 4);
    CHECK((rr::ensemble_reward(
               same, rr::EnsembleOptions::uncertainty_weighted(2.0, rr::StdKind::Population)) -
           R.col(0))
              .cwiseAbs()
              .maxCoeff() < 1e-15);
    // sample variance = population · K/(K − 1)
    const Vec<double> up = rr::ensemble_reward(
        R, rr::EnsembleOptions::uncertainty_weighted(1.0, rr::StdKind::Population));
    const Vec<double> us =
        rr::ensemble_reward(R, rr::EnsembleOptions::uncertainty_weighted(1.0, rr::StdKind::Sample));
    CHECK(((mean - us) - (mean - up) * (4.0 / 3.0)).cwiseAbs().maxCoeff() < 1e-12);
    // CTRL: calibration is invariant to a monotone transform of the reward model
    const Mat<double> base = gen.normal(5, 9);
    const Vec<double> r = gen.normal(5, 1).col(0);
    const Vec<double> u1 = rr::ctrl_calibrate(r, base);
    const Mat<double> base3 = base.array().cube();
    const Vec<double> r3 = r.array().cube();
    CHECK(rr::ctrl_calibrate(r3, base3) == u1);
    CHECK((u1.array() >= 0).all());
    CHECK((u1.array() <= 1).all());
    // KL in reward: identical old and ref ⇒ rewards unchanged, seq_kl 0
    const Mat<double> m = Mat<double>::Ones(2, 3), lp = gen.logprobs(2, 3), sc = gen.normal(2, 3);
    const auto same_kl = rr::kl_in_reward(sc, lp, lp, m, 0.1);
    CHECK(same_kl.rewards == sc);
    CHECK(same_kl.seq_kl.isZero(0));
    // k1 summed over a row equals Σ(old − ref), and β scales linearly
    const Mat<double> ref = gen.perturbed(lp, 0.5);
    const auto k1 = rr::kl_in_reward(
        sc, lp, ref, m, 0.2, rlpo::penalties::KLOptions::verl(rlpo::penalties::KLEstimator::K1));
    CHECK(k1.seq_kl(0) == Approx((lp.row(0) - ref.row(0)).sum()).epsilon(1e-12));
    CHECK(k1.rewards(1, 2) == Approx(sc(1, 2) - 0.2 * (lp(1, 2) - ref(1, 2))).epsilon(1e-12));
}

TEST_CASE("ARLCP / GRPO-CARE: closed forms", "[rollout][shaping][properties]") {
    // ARLCP: a correct response at the correct-mean count and length loses exactly w/2 = 0.1;
    // wrong responses get 0; a single correct response uses σ = 1
    Vec<double> c(4), refl(4), L(4);
    c << 1, 1, 1, 0;
    refl << 10, 20, 30, 500;
    L << 100, 200, 300, 50;
    const Vec<double> a = rr::arlcp_rewards(c, refl, L, Groups::equal(4, 4));
    CHECK(a(1) == Approx(1 - 0.05 * 0.5 - 0.15 * 0.5).epsilon(1e-12));
    CHECK(a(3) == 0.0);
    CHECK(a(0) > a(1));
    CHECK(a(1) > a(2));
    Vec<double> c1(2), r1(2), l1(2);
    c1 << 1, 0;
    r1 << 90, 0;
    l1 << 7, 3;
    const Vec<double> one = rr::arlcp_rewards(c1, r1, l1, Groups::equal(2, 2));
    CHECK(one(0) ==
          Approx(1 - 0.15 * 0.5 - 0.05 * 0.5).epsilon(1e-12));  // z = 0 with σ := 1; tier 3
    // CARE: bonus only for accurate and consistent responses, λ_b·acc
    Vec<double> acc(4), p(4);
    acc << 1, 1, 0, 1;
    p << 0.9, 0.5, 0.99, 0.705;
    const Vec<double> bonus = rr::care_consistency_bonus(acc, p, Groups::equal(4, 4));
    // accurate: 0, 1, 3 (acc ≥ mean 0.75); μ_p = 0.701(6); threshold 0.6917
    CHECK(bonus(0) == 0.5);
    CHECK(bonus(1) == 0.0);
    CHECK(bonus(2) == 0.0);
    CHECK(bonus(3) == 0.5);
    rr::CAREOptions cap;
    cap.consistency_cap = 0.7;  // caps 0.9 and 0.705 to 0.7: μ = 0.633, all accurate pass
    const Vec<double> capped = rr::care_consistency_bonus(acc, p, Groups::equal(4, 4), cap);
    CHECK(capped(1) == 0.0);  // 0.5 < 0.633 − 0.01
    CHECK(capped(0) == 0.5);
    CHECK(rr::care_consistency_bonus(Vec<double>::Zero(4), p, Groups::equal(4, 4)).isZero(0));
}

TEST_CASE("shaping: bad input gives the documented error", "[rollout][shaping][bad-input]") {
    Vec<double> L(2);
    L << 10, 20;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::overlong_penalty(L, OverlongOptions{}),
                                    "rollout::overlong_penalty(): max_length: must be > 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::overlong_penalty(L, OverlongOptions::dapo(10, 20)),
                                    "cache_length: must be in (0, max_length = 10], given 20");
    auto o = OverlongOptions::dapo(100, 20);
    o.penalty_factor = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::overlong_penalty(L, o), "penalty_factor: must be >= 0");
    L(1) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::overlong_penalty(L, OverlongOptions::dapo(100, 20)),
        "lengths: entries must be finite and >= 0, given nan at response 1");
    Vec<double> r(2), f(3);
    r << 1, 0;
    f << 0, 1, 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::truncation_penalty(r, f),
                                    "rollout::truncation_penalty(): truncated: expected 2 entries");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::truncation_penalty(r, r, 1.5),
                                    "factor: must be in [0, 1], given 1.5");
    const Groups g2 = Groups::equal(2, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::kimi_length_reward(f, r, g2),
        "rollout::kimi_length_reward(): lengths: has 3 entries, but the groups cover 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_lambda_rewards(r, r, g2, 1.2),
                                    "top_fraction: must be in [0, 1], given 1.2");
    {
        rr::DOTTruncationOptions o;
        o.success_threshold = 1.5;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::dot_truncation(r, r, g2, o),
                                        "success_threshold: must be in [0, 1], given 1.5");
        o = {};
        o.std_multiplier = -1;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::dot_truncation(r, r, g2, o),
                                        "std_multiplier: must be >= 0");
        o = {};
        o.min_truncation_margin = -2;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::dot_truncation(r, r, g2, o),
                                        "min_truncation_margin: must be >= 0");
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            rr::dot_truncation(f, r, g2),
            "rollout::dot_truncation(): lengths: has 3 entries, but the groups cover 2");
        Mat<double> mk = Mat<double>::Ones(3, 4);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::dot_truncate_mask(mk, r),
                                        "lengths: expected 3 entries (one per mask row), given 2");
    }
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_lambda_length_rewards(r, r, g2, 1.5),
                                    "alpha: must be in [0, 1], given 1.5");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::grpo_lambda_length_rewards(r, f, g2),
        "rollout::grpo_lambda_length_rewards(): lengths: has 3 entries, but the groups cover 2");
    rr::DOTOptions d;
    d.k_sigma = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::dot_outlier_truncation(r, r, r, g2, d),
                                    "k_sigma: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::stcr_scale_advantages(r, r, r, g2, 1.0),
                                    "base: must be > 1, given 1");
    Vec<double> lneg = r;
    lneg(0) = -2;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::stcr_scale_advantages(r, lneg, r, g2),
                                    "lengths: entries must be finite and >= 0, given -2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::ensemble_reward(Mat<double>::Ones(3, 1),
                            rr::EnsembleOptions::uncertainty_weighted(1, rr::StdKind::Sample)),
        "rollout::ensemble_reward(): rewards: the sample variance needs at least 2 reward models");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::ensemble_reward(Mat<double>::Ones(3, 2),
                            rr::EnsembleOptions::uncertainty_weighted(-1, rr::StdKind::Sample)),
        "uncertainty_coef: must be >= 0");
    Mat<double> Rn = Mat<double>::Ones(3, 2);
    Rn(2, 1) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::ensemble_reward(Rn, rr::EnsembleOptions::mean()),
                                    "rewards: non-finite value nan at [2, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::ctrl_calibrate(r, Mat<double>::Ones(3, 4)),
                                    "rollout::ctrl_calibrate(): base_rewards: expected 2 rows");
    Mat<double> Rc = Mat<double>::Ones(2, 2);
    Rc(1, 0) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::combine_rewards(Rc),
                                    "rollout::combine_rewards(): rewards: NaN at [1, 0]");
    CHECK(rr::combine_rewards(Rc, {}, rr::NanScores::AsZero)(1) == 1.0);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::combine_rewards(Rc, {1.0}),
                                    "weights: expected 2 entries (columns of rewards), given 1");
    Rc(1, 0) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::combine_rewards(Rc, {}, rr::NanScores::AsZero),
                                    "rewards: non-finite value inf at [1, 0]");
    // An overlong penalty beyond the output type: numerical_error, not -inf
    rr::OverlongOptions big = rr::OverlongOptions::dapo(4096.0, 512.0);
    big.penalty_factor = 1e300;
    Eigen::VectorXf lf(2);
    lf << 100.0F, 4000.0F;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::overlong_penalty(lf, big), "penalty of response 1");
    big.clip_beyond_max = false;
    Eigen::VectorXd ld(1);
    ld << 1e300;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::overlong_penalty(ld, big), "penalty of response 0");
    CHECK(rr::overlong_penalty(Eigen::VectorXd::Constant(1, 4000.0), big)(0) ==
          Approx(-1e300 * (4000.0 - 3584.0) / 512.0));
    // Finite rewards and weights whose weighted sum overflows: numerical_error, not ±inf or NaN
    Mat<double> Ro(2, 2);
    Ro << 1.0, 2.0, 1e30, -1e30;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::combine_rewards(Ro, {1e300, 1e300}),
                                 "the weighted sum of row 1 overflows");
    Mat<float> Rf(1, 2);
    Rf << 3e38F, 3e38F;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::combine_rewards(Rf), "the weighted sum of row 0 overflows");
    CHECK(rr::combine_rewards(Rf, {1.0, -1.0})(0) == 0.0F);
    rr::ARLCPOptions ao;
    ao.weight_high = 0.3;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::arlcp_rewards(r, r, r, g2, ao),
                                    "rollout::arlcp_rewards(): weights: each reflection weight "
                                    "must be in [0, total_weight = 0.2], given 0.3");
    ao = {};
    ao.tier_low = 100;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::arlcp_rewards(r, r, r, g2, ao),
                                    "tier_low: must be <= tier_high");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::arlcp_rewards(r, lneg, r, g2),
                                    "reflection_counts: entries must be finite and >= 0");
    rr::CAREOptions co;
    co.margin = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::care_consistency_bonus(r, r, g2, co),
                                    "rollout::care_consistency_bonus(): margin: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::care_consistency_bonus(r, f, g2),
                                    "consistency: has 3 entries, but the groups cover 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::ctrl_transform(r, 0.0),
                                    "rollout::ctrl_transform(): t: must be > 0");
    Vec<double> u(2);
    u << 0.5, 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::ctrl_transform(u, 1.0),
                                    "calibrated: must be in [0, 1], given 1.5 at response 1");
    const Mat<double> m = Mat<double>::Ones(2, 3), x = Mat<double>::Zero(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::kl_in_reward(x, x, Mat<double>::Zero(2, 2), m, 0.1),
                                    "penalties::kl_in_reward(): ref_logp: expected shape [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::kl_in_reward(x, x, x, m, -0.1), "beta: must be >= 0");
    Mat<double> xn = x;
    xn(1, 1) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::kl_in_reward(x, xn, x, m, 0.1), "old_logp: NaN at [1, 1]");
    Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::kl_in_reward(x, ninf, ninf, m, 0.1,
                         rlpo::penalties::KLOptions::trl(rlpo::penalties::KLEstimator::K1)),
        "give a non-finite loss");
}
