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

TEMPLATE_TEST_CASE("grpo / rloo advantages agree with the PyTorch reference", "[rollout][advantages][torch]",
                   float, double) {
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
    std::vector<GRPOOptions> presets{GRPOOptions{}, GRPOOptions::verl(), GRPOOptions::verl(false),
                                     GRPOOptions::trl(), GRPOOptions::trl(AdvantageScale::Batch),
                                     GRPOOptions::trl(AdvantageScale::None), GRPOOptions::openrlhf(),
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
        if (o.nan_scores == rr::NanScores::AsZero) run.scores(0) = std::numeric_limits<S>::quiet_NaN();
        auto& c = tr.add<S>("grpo");
        c.in("scores", Mat<S>(run.scores)).in("group_ids", b.ids);
        c.p("epsilon", o.epsilon).p("std_floor", o.std_floor);
        c.s("std", o.std_kind == StdKind::Sample ? "sample" : "population").s("scale", scale_name(o.scale));
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

TEMPLATE_TEST_CASE("grpo: degenerate groups give 0, never NaN or a blow-up", "[rollout][advantages][properties]",
                   float, double) {
    using S = TestType;
    Vec<S> s(7);
    s << S(0.1), S(0.1), S(0.1), S(3.5), S(2), S(2), S(2);
    const Groups g = Groups::from_offsets({0, 3, 4, 7});  // all-equal (0.1 is inexact), singleton, all-equal
    for (const auto& o : {GRPOOptions{}, GRPOOptions::trl(), GRPOOptions::openrlhf(), GRPOOptions::dr_grpo()}) {
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
        if (n > 1 && !ag.isZero(0)) CHECK(std::sqrt(ag.squaredNorm() / (n - 1)) == Approx(1.0).epsilon(1e-12));
    }
    // shift invariance (all options) and positive-scale invariance (std-normalised, ε = 0)
    const Vec<double> shifted = (b.scores.array() + 5.0).matrix();
    CHECK((rr::grpo_advantages(shifted, b.groups, o) - a).cwiseAbs().maxCoeff() < 1e-12);
    CHECK((rr::grpo_advantages(Vec<double>(3.0 * b.scores), b.groups, o) - a).cwiseAbs().maxCoeff() < 1e-12);
    // Dr.GRPO is linear in the scores and equals s − group mean
    const Vec<double> d = rr::grpo_advantages(b.scores, b.groups, GRPOOptions::dr_grpo());
    for (Index g = 0; g < b.groups.num_groups(); ++g) {
        const Index n = b.groups.size(g);
        if (n == 1) continue;
        const Vec<double> sg = b.scores.segment(b.groups.begin(g), n);
        CHECK((d.segment(b.groups.begin(g), n) - (sg.array() - sg.mean()).matrix()).cwiseAbs().maxCoeff() < 1e-12);
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
        CHECK((a.segment(b0, n) - d.segment(b0, n) * (double(n) / (n - 1))).cwiseAbs().maxCoeff() < 1e-12);
        // by enumeration: baseline of i is the mean of the others
        for (Index i = 0; i < n; ++i) {
            double other = 0;
            for (Index j = 0; j < n; ++j)
                if (j != i) other += b.scores(b0 + j);
            CHECK(a(b0 + i) == Approx(b.scores(b0 + i) - other / (n - 1)).margin(1e-12));
        }
    }
}

TEST_CASE("broadcast_to_tokens / outcome_token_rewards / lengths_from_mask", "[rollout][advantages][properties]") {
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

TEST_CASE("group advantages: bad input gives the documented error", "[rollout][advantages][bad-input]") {
    Vec<double> s(4);
    s << 1, 2, 3, 4;
    const Groups g = Groups::equal(4, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(s, Groups::equal(6, 2)),
                                    "rollout::grpo_advantages(): scores: has 4 entries, but the groups cover 6");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::rloo_advantages(s, Groups::equal(2, 2)), "rollout::rloo_advantages(): scores: has 4 entries");
    Vec<double> bad = s;
    bad(2) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(bad, g), "scores: NaN at response 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::rloo_advantages(bad, g), "scores: NaN at response 2");
    // TRL: a NaN reward counts as 0
    Vec<double> zero = s;
    zero(2) = 0;
    CHECK(rr::grpo_advantages(bad, g, GRPOOptions::trl()) == rr::grpo_advantages(zero, g, GRPOOptions::trl()));
    CHECK(rr::rloo_advantages(bad, g, RLOOOptions::trl()) == rr::rloo_advantages(zero, g));
    bad(2) = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(bad, g, GRPOOptions::trl()), "scores: non-finite value inf at response 2");
    GRPOOptions o;
    o.epsilon = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(s, g, o), "epsilon: must be >= 0");
    o = {};
    o.std_floor = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(s, g, o), "std_floor: must be >= 0");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::grpo_advantages(Mat<double>::Ones(2, 2), g), "scores: expected a vector");
    const Mat<double> m = Mat<double>::Ones(3, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::broadcast_to_tokens(s, m), "seq_values: expected 3 entries (rows of mask), given 4");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::outcome_token_rewards(s, m), "scores: expected 3 entries");
    Mat<double> mneg = Mat<double>::Ones(4, 2);
    mneg(1, 1) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::broadcast_to_tokens(s, mneg), "mask: entries must be finite and >= 0");
}
