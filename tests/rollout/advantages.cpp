// Group advantage estimators (GRPO, Dr.GRPO, RLOO, OPO, pass@k, GDPO, DLER) and the token
// helpers: PyTorch reference, properties (degenerate groups, invariances, leave-one-out
// identities, closed forms) and bad input. Advantages carry no gradient, so there is no FD check.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/torch_reference.hpp"

#include "rollout/common.hpp"

#include <rlpo/rollout/advantages.hpp>

#include <cmath>
#include <functional>
#include <limits>

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
using rlpo::rollout::AdvantageScale;
using rlpo::rollout::Groups;
using rlpo::rollout::GRPOOptions;
using rlpo::rollout::RLOOOptions;
using rlpo::rollout::StdKind;
using rollout_test::grouped_batch;
namespace rr = rlpo::rollout;
namespace rt = rlpo::testing;
constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();

namespace {
const char* scale_name(AdvantageScale s) {
    return s == AdvantageScale::Group ? "group" : s == AdvantageScale::Batch ? "batch" : "none";
}
}  // namespace

TEMPLATE_TEST_CASE("grpo / rloo advantages agree with the PyTorch reference",
                   "[rollout][advantages][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("rollout", std::string("adv_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Vec<S> scores;
        Groups groups;
        GRPOOptions g;
        RLOOOptions r;
        bool is_grpo;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 500;
    std::vector<GRPOOptions> presets{GRPOOptions{},
                                     GRPOOptions::verl(),
                                     GRPOOptions::verl(false),
                                     GRPOOptions::trl(),
                                     GRPOOptions::trl(AdvantageScale::Batch),
                                     GRPOOptions::trl(AdvantageScale::None),
                                     GRPOOptions::openrlhf(),
                                     GRPOOptions::dr_grpo()};
    GRPOOptions pop;
    pop.std_kind = StdKind::Population;
    pop.std_floor = 0.5;  // binds on the nearly-equal groups
    presets.push_back(pop);
    GRPOOptions batch_pop = pop;
    batch_pop.scale = AdvantageScale::Batch;
    batch_pop.singleton = rr::SingletonGroups::RawScore;
    presets.push_back(batch_pop);
    for (const auto& o : presets) {
        const auto b = grouped_batch(seed++);
        Run run{b.scores.cast<S>(), b.groups, o, {}, true};
        if (o.nan_scores == rr::NanScores::AsZero)
            run.scores(0) = std::numeric_limits<S>::quiet_NaN();
        auto& c = tr.add<S>("grpo");
        c.in("scores", Mat<S>(run.scores)).in("group_ids", b.ids);
        c.p("epsilon", o.epsilon).p("std_floor", o.std_floor);
        c.s("std", o.std_kind == StdKind::Sample ? "sample" : "population")
            .s("scale", scale_name(o.scale));
        c.s("singleton", o.singleton == rr::SingletonGroups::RawScore ? "raw" : "zero");
        c.s("nan", o.nan_scores == rr::NanScores::AsZero ? "zero" : "throw");
        runs.push_back(run);
    }
    for (const auto& o : {RLOOOptions{}, RLOOOptions::verl()}) {
        const auto b = grouped_batch(seed++);
        Run run{b.scores.cast<S>(), b.groups, {}, o, false};
        auto& c = tr.add<S>("rloo");
        c.in("scores", Mat<S>(run.scores)).in("group_ids", b.ids);
        c.s("singleton", o.singleton == rr::SingletonGroups::RawScore ? "raw" : "zero");
        runs.push_back(run);
    }
    tr.run();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i);
        const auto& r = runs[i];
        const Vec<S> a = r.is_grpo ? rr::grpo_advantages(r.scores, r.groups, r.g)
                                   : rr::rloo_advantages(r.scores, r.groups, r.r);
        CHECK(rlpo_test::max_rel_err(Mat<double>(a.template cast<double>()), tr.out(i, "adv")) <
              rlpo_test::ref_tol<S>());
    }
}

TEMPLATE_TEST_CASE("grpo: degenerate groups give 0, never NaN or a blow-up",
                   "[rollout][advantages][properties]", float, double) {
    using S = TestType;
    Vec<S> s(7);
    s << S(0.1), S(0.1), S(0.1), S(3.5), S(2), S(2), S(2);
    const Groups g =
        Groups::from_offsets({0, 3, 4, 7});  // all-equal (0.1 is inexact), singleton, all-equal
    for (const auto& o :
         {GRPOOptions{}, GRPOOptions::trl(), GRPOOptions::openrlhf(), GRPOOptions::dr_grpo()}) {
        const Vec<S> a = rr::grpo_advantages(s, g, o);
        CHECK(a.isZero(0));
        CHECK(rr::rloo_advantages(s, g).isZero(0));
    }
    // verl: a singleton keeps its raw score (mean 0, std 1 ⇒ s/(1 + ε)); all-equal groups still 0
    const Vec<S> v = rr::grpo_advantages(s, g, GRPOOptions::verl());
    CHECK(v(3) == Approx(3.5 / (1 + 1e-6)).epsilon(1e-6));
    CHECK(v(0) == 0);
    CHECK(v(6) == 0);
    CHECK(rr::grpo_advantages(s, g, GRPOOptions::verl(false))(3) == S(3.5));
    CHECK(rr::rloo_advantages(s, g, RLOOOptions::verl())(3) == S(3.5));
    // the std floor bounds the amplification of a nearly-equal group
    Vec<S> near(2);
    near << S(1), S(1) + S(1e-3);
    GRPOOptions fl;
    fl.std_floor = 0.1;
    const Vec<S> an = rr::grpo_advantages(near, Groups::equal(2, 2), fl);
    CHECK(std::abs(an(0)) <= S(0.5e-3 / 0.1 * 1.01));
    const Vec<S> ab = rr::grpo_advantages(near, Groups::equal(2, 2));
    CHECK(std::abs(ab(0)) == Approx(1 / std::sqrt(2.0)).epsilon(1e-2));  // without floor: ±1/√2
    // ε = 0 on an all-equal batch is still 0, not 0/0
    GRPOOptions z;
    z.epsilon = 0;
    z.scale = AdvantageScale::Batch;
    CHECK(rr::grpo_advantages(Vec<S>::Constant(4, S(2)), Groups::equal(4, 2), z).isZero(0));
    // an empty batch is fine
    CHECK(rr::grpo_advantages(Vec<S>(0), Groups::equal(0, 4)).size() == 0);
}

TEST_CASE("grpo: closed forms and invariances", "[rollout][advantages][properties]") {
    // binary group with k of n correct: A_correct = (1 − p)/σ, A_wrong = −p/σ, σ = sqrt(n p (1 − p)/(n − 1))
    for (Index n : {2, 4, 8, 16})
        for (Index k = 1; k < n; ++k) {
            Vec<double> s = Vec<double>::Zero(n);
            s.head(k).setOnes();
            GRPOOptions o;
            o.epsilon = 0;
            const Vec<double> a = rr::grpo_advantages(s, Groups::equal(n, n), o);
            const double p = double(k) / n, sigma = std::sqrt(n * p * (1 - p) / (n - 1));
            CHECK(a(0) == Approx((1 - p) / sigma).epsilon(1e-12));
            CHECK(a(n - 1) == Approx(-p / sigma).epsilon(1e-12));
            o.std_kind = StdKind::Population;
            const Vec<double> ap = rr::grpo_advantages(s, Groups::equal(n, n), o);
            CHECK(ap(0) == Approx(std::sqrt((1 - p) / p)).epsilon(1e-12));
        }
    const auto b = grouped_batch(42);
    GRPOOptions o;
    o.epsilon = 0;
    const Vec<double> a = rr::grpo_advantages(b.scores, b.groups, o);
    // zero mean and unit sample std within every non-degenerate group
    for (Index g = 0; g < b.groups.num_groups(); ++g) {
        const Index n = b.groups.size(g);
        const Vec<double> ag = a.segment(b.groups.begin(g), n);
        CHECK(std::abs(ag.sum()) < 1e-12);
        if (n > 1 && !ag.isZero(0))
            CHECK(std::sqrt(ag.squaredNorm() / (n - 1)) == Approx(1.0).epsilon(1e-12));
    }
    // shift invariance (all options) and positive-scale invariance (std-normalised, ε = 0)
    const Vec<double> shifted = (b.scores.array() + 5.0).matrix();
    CHECK((rr::grpo_advantages(shifted, b.groups, o) - a).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(
        (rr::grpo_advantages(Vec<double>(3.0 * b.scores), b.groups, o) - a).cwiseAbs().maxCoeff() <
        1e-12);
    // Dr.GRPO is linear in the scores and equals s − group mean
    const Vec<double> d = rr::grpo_advantages(b.scores, b.groups, GRPOOptions::dr_grpo());
    for (Index g = 0; g < b.groups.num_groups(); ++g) {
        const Index n = b.groups.size(g);
        if (n == 1) continue;
        const Vec<double> sg = b.scores.segment(b.groups.begin(g), n);
        CHECK((d.segment(b.groups.begin(g), n) - (sg.array() - sg.mean()).matrix())
                  .cwiseAbs()
                  .maxCoeff() < 1e-12);
    }
    // group-local: permuting whole groups permutes the advantages
    const Groups two = Groups::equal(6, 3);
    Vec<double> s2(6), s2p(6);
    s2 << 1, 2, 4, 0, 0, 1;
    s2p << 0, 0, 1, 1, 2, 4;
    const Vec<double> a2 = rr::grpo_advantages(s2, two), a2p = rr::grpo_advantages(s2p, two);
    CHECK((a2.head(3) - a2p.tail(3)).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("rloo: leave-one-out identities", "[rollout][advantages][properties]") {
    const auto b = grouped_batch(43);
    const Vec<double> a = rr::rloo_advantages(b.scores, b.groups);
    const Vec<double> d = rr::grpo_advantages(b.scores, b.groups, GRPOOptions::dr_grpo());
    for (Index g = 0; g < b.groups.num_groups(); ++g) {
        const Index n = b.groups.size(g), b0 = b.groups.begin(g);
        if (n == 1) {
            CHECK(a(b0) == 0.0);
            continue;
        }
        CHECK(std::abs(a.segment(b0, n).sum()) < 1e-12);
        // n/(n−1)·(s − mean) = n/(n−1)·Dr.GRPO
        CHECK((a.segment(b0, n) - d.segment(b0, n) * (double(n) / (n - 1))).cwiseAbs().maxCoeff() <
              1e-12);
        // by enumeration: baseline of i is the mean of the others
        for (Index i = 0; i < n; ++i) {
            double other = 0;
            for (Index j = 0; j < n; ++j)
                if (j != i) other += b.scores(b0 + j);
            CHECK(a(b0 + i) == Approx(b.scores(b0 + i) - other / (n - 1)).margin(1e-12));
        }
    }
}

TEST_CASE("broadcast_to_tokens / outcome_token_rewards / lengths_from_mask",
          "[rollout][advantages][properties]") {
    rt::Generator gen(5);
    Mat<float> m = gen.mask<float>(5, 7, 1, true);
    m(2, 3) = 0;  // a hole
    Vec<double> a(5);
    a << 1.5, -2, 0.25, 3, -1;
    const Mat<float> A = rr::broadcast_to_tokens(a, m);
    const Mat<float> R = rr::outcome_token_rewards(a, m);
    const Vec<float> len = rr::lengths_from_mask(m);
    for (Index i = 0; i < 5; ++i) {
        Index last = -1, n = 0;
        for (Index t = 0; t < 7; ++t) {
            CHECK(A(i, t) == (m(i, t) != 0 ? float(a(i)) : 0.0f));
            if (m(i, t) != 0) last = t, ++n;
        }
        CHECK(len(i) == float(n));
        for (Index t = 0; t < 7; ++t) CHECK(R(i, t) == (t == last ? float(a(i)) : 0.0f));
        CHECK(R.row(i).sum() == (n > 0 ? float(a(i)) : 0.0f));
    }
}

TEST_CASE("group advantages: bad input gives the documented error",
          "[rollout][advantages][bad-input]") {
    Vec<double> s(4);
    s << 1, 2, 3, 4;
    const Groups g = Groups::equal(4, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::grpo_advantages(s, Groups::equal(6, 2)),
        "rollout::grpo_advantages(): scores: has 4 entries, but the groups cover 6");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::rloo_advantages(s, Groups::equal(2, 2)),
                                    "rollout::rloo_advantages(): scores: has 4 entries");
    Vec<double> bad = s;
    bad(2) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(bad, g), "scores: NaN at response 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::rloo_advantages(bad, g), "scores: NaN at response 2");
    // TRL: a NaN reward counts as 0
    Vec<double> zero = s;
    zero(2) = 0;
    CHECK(rr::grpo_advantages(bad, g, GRPOOptions::trl()) ==
          rr::grpo_advantages(zero, g, GRPOOptions::trl()));
    CHECK(rr::rloo_advantages(bad, g, RLOOOptions::trl()) == rr::rloo_advantages(zero, g));
    bad(2) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(bad, g, GRPOOptions::trl()),
                                    "scores: non-finite value inf at response 2");
    GRPOOptions o;
    o.epsilon = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(s, g, o), "epsilon: must be >= 0");
    o = {};
    o.std_floor = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(s, g, o), "std_floor: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(Mat<double>::Ones(2, 2), g),
                                    "scores: expected a vector");
    const Mat<double> m = Mat<double>::Ones(3, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::broadcast_to_tokens(s, m),
                                    "seq_values: expected 3 entries (rows of mask), given 4");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::outcome_token_rewards(s, m), "scores: expected 3 entries");
    Mat<double> mneg = Mat<double>::Ones(4, 2);
    mneg(1, 1) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::broadcast_to_tokens(s, mneg),
                                    "mask: entries must be finite and >= 0");
}

TEMPLATE_TEST_CASE("opo / pass@k / gdpo agree with the PyTorch reference",
                   "[rollout][advantages][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("rollout", std::string("adv2_") + (sizeof(S) == 4 ? "f" : "d"));
    std::vector<std::function<void(std::size_t)>> checks;
    const double tol = rlpo_test::ref_tol<S>();
    auto compare = [&tr, tol](std::size_t i, const Vec<S>& a) {
        CHECK(rlpo_test::max_rel_err(Mat<double>(a.template cast<double>()), tr.out(i, "adv")) <
              tol);
    };
    std::uint64_t seed = 1500;
    for (const auto& o : {rr::OPOOptions{}, rr::OPOOptions::verl()}) {
        const auto b = grouped_batch(seed++);
        rt::Generator gen(seed++);
        Vec<S> L(b.n());
        for (Index i = 0; i < b.n(); ++i) L(i) = static_cast<S>(gen.integer(0, 50));
        L.head(3).setZero();  // first group may have all-zero lengths: plain mean
        const Vec<S> s = b.scores.cast<S>();
        auto& c = tr.add<S>("opo");
        c.in("scores", Mat<S>(s)).in("lengths", Mat<S>(L)).in("group_ids", b.ids);
        c.s("singleton", o.singleton == rr::SingletonGroups::RawScore ? "raw" : "zero");
        checks.push_back([=](std::size_t i) { compare(i, rr::opo_advantages(s, L, b.groups, o)); });
    }
    for (bool norm : {true, false}) {
        auto b = grouped_batch(seed++);
        b.groups = Groups::equal(b.n() - b.n() % 4, 4);  // pass@k needs groups of ≥ 2
        const Index n = b.groups.num_responses();
        Vec<S> s = b.scores.head(n).cast<S>();
        s(5) = s(6) = S(9);  // a tie for the maximum
        Mat<double> ids(n, 1);
        for (Index i = 0; i < n; ++i) ids(i, 0) = double(i / 4);
        rr::GRPOPassKOptions o;
        o.norm_by_std = norm;
        auto& c = tr.add<S>("grpo_passk");
        c.in("scores", Mat<S>(s))
            .in("group_ids", ids)
            .p("epsilon", o.epsilon)
            .s("norm", norm ? "yes" : "no");
        checks.push_back(
            [=](std::size_t i) { compare(i, rr::grpo_passk_advantages(s, b.groups, o)); });
    }
    for (Index k : {1, 2, 3, 5}) {
        rt::Generator gen(seed++);
        const Groups g = Groups::from_offsets({0, 5, 11, 16, 21});
        Vec<S> s(21);
        for (Index i = 0; i < 21; ++i) s(i) = gen.uniform() < 0.4 ? S(1) : S(0);
        s.segment(16, 5).setOnes();  // all correct: 0
        s(0) = S(1), s(1) = S(0);
        Mat<double> ids(21, 1);
        for (Index gi = 0; gi < 4; ++gi)
            for (Index i = g.begin(gi); i < g.end(gi); ++i) ids(i, 0) = double(gi);
        auto& c = tr.add<S>("passk_enumerated");
        c.in("scores", Mat<S>(s)).in("group_ids", ids).p("k", double(k));
        checks.push_back([=](std::size_t i) { compare(i, rr::passk_advantages(s, g, k)); });
    }
    for (int variant = 0; variant < 2; ++variant) {
        const auto b = grouped_batch(seed++);
        rt::Generator gen(seed++);
        Mat<S> R(b.n(), 3);
        for (Index i = 0; i < b.n(); ++i) {
            R(i, 0) = static_cast<S>(b.scores(i));
            R(i, 1) = gen.uniform() < 0.5 ? S(1) : S(0);  // a format reward
            R(i, 2) = static_cast<S>(gen.normal());
        }
        rr::GDPOOptions o;
        if (variant == 1) o.weights = {1.0, 0.5, 2.0};
        auto& c = tr.add<S>("gdpo");
        c.in("rewards", R)
            .in("group_ids", b.ids)
            .p("epsilon", o.component.epsilon)
            .p("batch_epsilon", o.batch_epsilon);
        if (!o.weights.empty())
            c.p("weights", Mat<double>(Eigen::Map<const Mat<double>>(o.weights.data(), 3, 1)));
        checks.push_back([=](std::size_t i) { compare(i, rr::gdpo_advantages(R, b.groups, o)); });
    }
    {  // TRL normalize_then_sum with abstaining (NaN) reward functions
        const auto b = grouped_batch(seed++);
        rt::Generator gen(seed++);
        Mat<S> R(b.n(), 2);
        for (Index i = 0; i < b.n(); ++i) {
            R(i, 0) = static_cast<S>(b.scores(i));
            R(i, 1) = gen.uniform() < 0.25 ? std::numeric_limits<S>::quiet_NaN()
                                           : static_cast<S>(gen.normal());
        }
        const rr::GDPOOptions o = rr::GDPOOptions::trl();
        auto& c = tr.add<S>("gdpo_trl");
        c.in("rewards", R).in("group_ids", b.ids);
        checks.push_back([=](std::size_t i) { compare(i, rr::gdpo_advantages(R, b.groups, o)); });
    }
    tr.run();
    for (std::size_t i = 0; i < checks.size(); ++i) {
        INFO("case " << i);
        checks[i](i);
    }
}

TEST_CASE("pass@k / OPO / GDPO: closed forms and identities", "[rollout][advantages][properties]") {
    // pass@1 is GRPO with population std and ε = 0; pass@k sums to 0 in each group
    rt::Generator gen(77);
    Vec<double> s(24);
    for (Index i = 0; i < 24; ++i) s(i) = gen.uniform() < 0.5 ? 1.0 : 0.0;
    s(0) = 1, s(1) = 0;
    const Groups g = Groups::equal(24, 8);
    GRPOOptions pop;
    pop.std_kind = StdKind::Population;
    pop.epsilon = 0;
    CHECK((rr::passk_advantages(s, g, 1) - rr::grpo_advantages(s, g, pop)).cwiseAbs().maxCoeff() <
          1e-12);
    for (Index k = 1; k <= 8; ++k) {
        const Vec<double> a = rr::passk_advantages(s, g, k);
        for (Index gi = 0; gi < 3; ++gi) CHECK(std::abs(a.segment(8 * gi, 8).sum()) < 1e-10);
        // correct responses never get less than wrong ones
        for (Index i = 0; i < 24; ++i)
            for (Index j = 0; j < 24; ++j)
                if (i / 8 == j / 8 && s(i) == 1 && s(j) == 0) CHECK(a(i) >= a(j));
    }
    // k = n with two correct answers: every n-subset passes, σ = 0 ⇒ 0
    Vec<double> two(4);
    two << 1, 1, 0, 0;
    const Vec<double> an = rr::passk_advantages(two, Groups::equal(4, 4), 4);
    CHECK(an.isZero(0));  // every 4-subset contains a correct answer: σ = 0 ⇒ 0
    // OPO with equal lengths is Dr.GRPO; the length-weighted baseline of a group
    const auto b = grouped_batch(78);
    const Vec<double> ones = Vec<double>::Constant(b.n(), 7.0);
    CHECK((rr::opo_advantages(b.scores, ones, b.groups) -
           rr::grpo_advantages(b.scores, b.groups, GRPOOptions::dr_grpo()))
              .cwiseAbs()
              .maxCoeff() < 1e-12);
    Vec<double> s3(3), l3(3);
    s3 << 1, 0, 0;
    l3 << 10, 20, 30;
    const Vec<double> o3 = rr::opo_advantages(s3, l3, Groups::equal(3, 3));
    CHECK(o3(0) == Approx(1 - 10.0 / 60).epsilon(1e-14));
    CHECK(o3(1) == Approx(-10.0 / 60).epsilon(1e-14));
    // GDPO with one component and no batch step is GRPO; the batch step gives mean 0, std 1
    rr::GDPOOptions go;
    go.batch_normalize = false;
    const Mat<double> one = b.scores;
    CHECK((rr::gdpo_advantages(one, b.groups, go) - rr::grpo_advantages(b.scores, b.groups))
              .cwiseAbs()
              .maxCoeff() < 1e-12);
    Mat<double> two_rewards(b.n(), 2);
    two_rewards.col(0) = b.scores;
    for (Index i = 0; i < b.n(); ++i) two_rewards(i, 1) = double(i % 3 == 0);
    rr::GDPOOptions gb;
    gb.batch_epsilon = 0;
    const Vec<double> ag = rr::gdpo_advantages(two_rewards, b.groups, gb);
    CHECK(std::abs(ag.mean()) < 1e-12);
    CHECK(std::sqrt((ag.array() - ag.mean()).square().sum() / (b.n() - 1)) ==
          Approx(1.0).epsilon(1e-12));
    // the paper's collapse: summed rewards {0, 1} and {0, 2} get the same GRPO advantages, GDPO
    // keeps (1, 1) above (0, 1)
    Mat<double> coll(4, 2);
    coll << 0, 0, 0, 1, 0, 0, 1, 1;
    const Vec<double> sums = coll.rowwise().sum();
    GRPOOptions no_eps;
    no_eps.epsilon = 0;
    const Vec<double> ga = rr::grpo_advantages(sums, Groups::equal(4, 2), no_eps);
    CHECK(ga(1) == Approx(ga(3)).epsilon(1e-12));
    const Vec<double> gd = rr::gdpo_advantages(coll, Groups::equal(4, 2), rr::GDPOOptions{});
    CHECK(gd(3) > gd(1) + 0.1);
    CHECK(gd(2) < gd(0) - 0.1);
    // verl pass@k: only the best response is non-zero, and it equals s_max − s_2nd without std
    Vec<double> pk(4);
    pk << 0.2, 0.9, 0.5, 0.1;
    rr::GRPOPassKOptions po;
    po.norm_by_std = false;
    const Vec<double> ap = rr::grpo_passk_advantages(pk, Groups::equal(4, 4), po);
    CHECK(ap(1) == Approx(0.4));
    CHECK(ap(0) == 0);
    CHECK(ap(2) == 0);
    // with std, ε = 0: scores {x, 0, 0, 0} give x/σ = 2 (sample σ = x/2) or 4/√3 (population
    // σ = √3·x/4) at any scale, tiny ones included; at the smallest denormal (where σ rounds to
    // 0) the advantage stays finite instead of inf
    po.norm_by_std = true;
    po.epsilon = 0;
    for (const double x : {1.0, 1e-310}) {
        Vec<double> one(4);
        one << x, 0, 0, 0;
        po.std_kind = rr::StdKind::Sample;
        CHECK(rr::grpo_passk_advantages(one, Groups::equal(4, 4), po)(0) ==
              Approx(2.0).epsilon(1e-9));
        po.std_kind = rr::StdKind::Population;
        CHECK(rr::grpo_passk_advantages(one, Groups::equal(4, 4), po)(0) ==
              Approx(4.0 / std::sqrt(3.0)).epsilon(1e-9));
    }
    Vec<double> dn(4);
    dn << std::numeric_limits<double>::denorm_min(), 0, 0, 0;
    for (const auto kind : {rr::StdKind::Sample, rr::StdKind::Population}) {
        po.std_kind = kind;
        const double a0 = rr::grpo_passk_advantages(dn, Groups::equal(4, 4), po)(0);
        CHECK(std::isfinite(a0));
        CHECK(a0 > 0);
        CHECK(a0 < 2.5);
    }
    // without std, s_max − s_2nd beyond the double range is a numerical error
    po.norm_by_std = false;
    Vec<double> huge(2);
    huge << 1e308, -1e308;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::grpo_passk_advantages(huge, Groups::equal(2, 2), po),
                                 "overflows the storage type");
    po.norm_by_std = true;
    CHECK(std::isfinite(rr::grpo_passk_advantages(huge, Groups::equal(2, 2), po)(0)));
}

TEST_CASE("pass@k / OPO / GDPO: bad input gives the documented error",
          "[rollout][advantages][bad-input]") {
    {
        // GDPO: finite weights whose weighted sum of component advantages overflows
        // three identical components: each |advantage| ≥ 0.7, so 3 × 0.7 × 1e308 overflows
        Mat<double> R(4, 3);
        R << 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0;
        rr::GDPOOptions go;
        go.weights = {1e308, 1e308, 1e308};
        RLPO_REQUIRE_NUMERICAL_ERROR(rr::gdpo_advantages(R, Groups::equal(4, 2), go),
                                     "the weighted sum of the component advantages");
        go.weights = {1e300, 1.0, 1.0};
        go.batch_normalize = false;
        Mat<float> Rf = R.cast<float>();
        RLPO_REQUIRE_NUMERICAL_ERROR(rr::gdpo_advantages(Rf, Groups::equal(4, 2), go),
                                     "overflows the storage type");
    }
    Vec<double> s(4);
    s << 1, 0, 0.5, 1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::passk_advantages(s, Groups::equal(4, 2), 1),
                                    "rollout::passk_advantages(): scores: must be 0 or 1 (binary "
                                    "rewards), given 0.5 at response 2");
    s(2) = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::passk_advantages(s, Groups::equal(4, 2), 3),
                                    "k: 3 exceeds the size 2 of group 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::passk_advantages(s, Groups::equal(4, 2), 0),
                                    "k: must be >= 1");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_passk_advantages(s, Groups::from_offsets({0, 1, 4})),
                                    "rollout::grpo_passk_advantages(): groups: group 0 has 1 "
                                    "response(s); pass@k needs at least 2");
    Vec<double> l(4);
    l << 1, 2, -3, 4;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::opo_advantages(s, l, Groups::equal(4, 2)),
                                    "rollout::opo_advantages(): lengths: entries must be finite "
                                    "and >= 0, given -3 at response 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::opo_advantages(s, Vec<double>::Ones(3), Groups::equal(4, 2)), "lengths: has 3 entries");
    rr::GDPOOptions go;
    go.weights = {1.0};
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::gdpo_advantages(Mat<double>::Ones(4, 2), Groups::equal(4, 2), go),
        "rollout::gdpo_advantages(): weights: expected 2 entries (columns of rewards), given 1");
    go = {};
    go.component.scale = AdvantageScale::Batch;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::gdpo_advantages(Mat<double>::Ones(4, 2), Groups::equal(4, 2), go),
        "component.scale: must be Group or None");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::gdpo_advantages(Mat<double>::Ones(4, 0), Groups::equal(4, 2)),
        "expected at least one reward component");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::gdpo_advantages(Mat<double>::Ones(3, 2), Groups::equal(4, 2)),
        "rewards: has 3 entries, but the groups cover 4");
}

TEST_CASE("advantage estimator names round-trip; unknown names list the valid ones",
          "[rollout][advantages][names]") {
    using E = rr::AdvantageEstimator;
    for (E e : {E::GAE, E::GRPO, E::DrGRPO, E::RLOO, E::ReinforcePP, E::ReinforcePPBaseline,
                E::ReMax, E::OPO, E::GRPOPassK, E::PassK, E::GDPO})
        CHECK(rr::parse_advantage_estimator(rr::to_string(e)) == e);
    CHECK(rr::parse_advantage_estimator("reinforce_plus_plus") == E::ReinforcePP);
    CHECK(rr::parse_advantage_estimator("grpo_passk") == E::GRPOPassK);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::parse_advantage_estimator("ppo"),
                                    "rollout::parse_advantage_estimator(): name: unknown advantage "
                                    "estimator 'ppo'; valid names: gae, grpo, dr_grpo, rloo");
}

TEST_CASE("group advantages: huge and tiny scores stay finite and scale invariant",
          "[rollout][advantages][bad_input]") {
    // (s − μ)/σ is invariant under s → c·s (ε = 0): the ×1e200 and ×1e-200 scores must give
    // the advantages of the unscaled ones (their squares over- / underflow a double)
    const Vec<double> s = (Vec<double>(7) << 0.3, -1.2, 2.5, 0.0, 1.0, 0.7, -0.4).finished();
    const Groups g = Groups::from_offsets({0, 4, 7});
    for (AdvantageScale scale : {AdvantageScale::Group, AdvantageScale::Batch})
        for (StdKind kind : {StdKind::Sample, StdKind::Population}) {
            GRPOOptions o;
            o.epsilon = 0;
            o.scale = scale;
            o.std_kind = kind;
            const Vec<double> a = rr::grpo_advantages(s, g, o);
            for (double c : {1e200, 1e-200, 1e307}) {
                INFO("scale " << c);
                const Vec<double> ac = rr::grpo_advantages(Vec<double>(s * c), g, o);
                REQUIRE(ac.allFinite());
                CHECK(rlpo_test::max_rel_err(ac, a) < 1e-13);
            }
            // opposite extremes: s − μ itself overflows, the quotient does not
            const Vec<double> ext = (Vec<double>(2) << -1.5e308, 1.5e308).finished();
            const Vec<double> ae = rr::grpo_advantages(ext, Groups::equal(2, 2), o);
            REQUIRE(ae.allFinite());
            const double want = kind == StdKind::Sample ? std::sqrt(0.5) : 1.0;
            CHECK(ae(1) == Approx(want).epsilon(1e-14));
            CHECK(ae(0) == Approx(-want).epsilon(1e-14));
        }
    // RLOO = n/(n−1)·(s − μ) scales with the scores: finite up to the double range
    const Vec<double> r = rr::rloo_advantages(s, g);
    const Vec<double> rc = rr::rloo_advantages(Vec<double>(s * 1e306), g);
    REQUIRE(rc.allFinite());
    CHECK(rlpo_test::max_rel_err(Vec<double>(rc / 1e306), r) < 1e-13);
    // …and beyond it the true advantage overflows → numerical_error, never inf
    const Vec<double> ext = (Vec<double>(2) << -1.5e308, 1.5e308).finished();
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::rloo_advantages(ext, Groups::equal(2, 2)), "overflows");
    // Dr.GRPO's s − μ: ±1.5e308 is representable, −1.7e308 − 0.57e308 is not
    const Vec<double> dr = rr::grpo_advantages(ext, Groups::equal(2, 2), GRPOOptions::dr_grpo());
    CHECK(dr(1) == 1.5e308);
    const Vec<double> ext3 = (Vec<double>(3) << -1.7e308, 1.7e308, 1.7e308).finished();
    RLPO_REQUIRE_NUMERICAL_ERROR(
        rr::grpo_advantages(ext3, Groups::equal(3, 3), GRPOOptions::dr_grpo()), "overflows");
    // …while its normalised advantage is fine (the std is taken scaled)
    CHECK(rr::grpo_advantages(ext3, Groups::equal(3, 3)).allFinite());
    // OPO: Σ l·s overflows at 1e306 scores with lengths 1e3; the baseline does not
    const Vec<double> len = (Vec<double>(7) << 100, 200, 300, 400, 500, 600, 700).finished();
    const Vec<double> op = rr::opo_advantages(s, len, g);
    const Vec<double> opc = rr::opo_advantages(Vec<double>(s * 1e306), len, g);
    REQUIRE(opc.allFinite());
    CHECK(rlpo_test::max_rel_err(Vec<double>(opc / 1e306), op) < 1e-13);
}

TEST_CASE("grpo: verl's singleton rule under the batch std", "[rollout][advantages][bad_input]") {
    // all-equal singleton groups: the batch std is 0; verl takes a singleton's std as 1, so the
    // advantage is s/(1 + ε) (it used to be s/ε = 1e6·s)
    const Vec<double> s = Vec<double>::Constant(4, 0.5);
    GRPOOptions o = GRPOOptions::verl();
    o.scale = AdvantageScale::Batch;
    const Vec<double> a = rr::grpo_advantages(s, Groups::equal(4, 1), o);
    for (Index k = 0; k < 4; ++k) CHECK(a(k) == 0.5 / (1 + 1e-6));
    // the same as the group scale (verl's own arithmetic)
    const Vec<double> ag = rr::grpo_advantages(s, Groups::equal(4, 1), GRPOOptions::verl());
    CHECK(rlpo_test::max_rel_err(a, ag) == 0.0);
    // groups of several all-equal scores: exactly 0 under every scale
    const Vec<double> z = rr::grpo_advantages(s, Groups::equal(4, 2), o);
    CHECK(z.isZero(0.0));
}
