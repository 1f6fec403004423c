// Token-level advantages (whitening, REINFORCE++, REINFORCE++-baseline, GAE): PyTorch reference,
// properties (GAE λ = 1 ⇒ G − V, λ = 0 ⇒ TD error, reward-to-go, whitening moments, masked
// positions never read) and bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include "rollout/common.hpp"

#include <rlpo/rollout/returns.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>

using rlpo::Index;
using rlpo::Mat;
using rlpo::Vec;
using rlpo::rollout::GAEOptions;
using rlpo::rollout::ReinforcePPBaselineOptions;
using rlpo::rollout::ReinforcePPOptions;
using rlpo::rollout::WhitenOptions;
namespace rr = rlpo::rollout;
namespace rt = rlpo::testing;
constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();

namespace {
// A mask with prefix rows, an empty row, and a multi-turn row with holes; NaN at masked spots.
template <class S>
Mat<S> holey_mask(rt::Generator& gen, Index B, Index T) {
    Mat<S> m = gen.mask<S>(B, T, 1, true);
    m.row(0).setOnes();
    m.row(1).setOnes();
    m(1, 2) = 0;
    m(1, 3) = 0;
    m(1, T - 2) = 0;
    return m;
}
template <class S>
Mat<S> poison(Mat<S> x, const Mat<S>& m) {
    for (Index k = 0; k < x.size(); ++k)
        if (m.data()[k] == 0) x.data()[k] = std::numeric_limits<S>::quiet_NaN();
    return x;
}
template <class S>
void whiten_params(rlpo_test::TorchReference::Case& c, const WhitenOptions& w) {
    c.p("whiten_eps", w.epsilon).s("whiten_std", w.unbiased ? "sample" : "population");
    c.s("whiten_floor", w.eps_as_floor ? "yes" : "no");
}
}  // namespace

TEMPLATE_TEST_CASE("reinforce++ / ++baseline / gae agree with the PyTorch reference",
                   "[rollout][returns][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference tr("rollout", std::string("ret_") + (sizeof(S) == 4 ? "f" : "d"));
    enum Kind { RPP, RPPB, GAE, REMAX };
    struct Run {
        Kind kind;
        Mat<S> r, v, m;
        Vec<S> scores;
        rr::Groups groups;
        ReinforcePPOptions rpp;
        ReinforcePPBaselineOptions rppb;
        GAEOptions gae;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 700;
    const Index B = 7, T = 9;
    for (double gamma : {1.0, 0.9, 0.0})
        for (bool whiten : {true, false}) {
            rt::Generator gen(seed++);
            Run run{RPP, {}, {}, holey_mask<S>(gen, B, T), {}, {}, {}, {}, {}};
            run.r = poison<S>(gen.normal<S>(B, T), run.m);
            run.rpp.gamma = gamma;
            run.rpp.whiten = whiten;
            if (gamma == 0.9) run.rpp.whitening = WhitenOptions::openrlhf();
            auto& c = tr.add<S>("reinforce_pp");
            c.in("token_rewards", run.r)
                .in("mask", run.m)
                .p("gamma", gamma)
                .s("whiten", whiten ? "yes" : "no");
            whiten_params<S>(c, run.rpp.whitening);
            runs.push_back(run);
        }
    for (const auto& o : {ReinforcePPBaselineOptions{}, ReinforcePPBaselineOptions::verl()}) {
        const auto b = rollout_test::grouped_batch(seed++, 4, 4);
        rt::Generator gen(seed++);
        Run run{RPPB, {}, {}, holey_mask<S>(gen, b.n(), T), b.scores.cast<S>(), b.groups,
                {},   o,  {}};
        auto& c = tr.add<S>("reinforce_pp_baseline");
        c.in("scores", Mat<S>(run.scores)).in("group_ids", b.ids).in("mask", run.m);
        c.s("singleton", o.singleton == rr::SingletonGroups::RawScore ? "raw" : "zero");
        whiten_params<S>(c, o.whitening);
        runs.push_back(run);
    }
    for (const auto& o : {GAEOptions{}, GAEOptions::openrlhf(), GAEOptions::ppo_paper()})
        for (bool whiten : {true, false}) {
            rt::Generator gen(seed++);
            Run run{GAE, {}, {}, holey_mask<S>(gen, B, T), {}, {}, {}, {}, o};
            run.r = poison<S>(gen.normal<S>(B, T), run.m);
            run.v = poison<S>(gen.normal<S>(B, T), run.m);
            run.gae.whiten = whiten;
            auto& c = tr.add<S>("gae");
            c.in("token_rewards", run.r).in("values", run.v).in("mask", run.m);
            c.p("gamma", o.gamma).p("lambda", o.lambda).s("whiten", whiten ? "yes" : "no");
            whiten_params<S>(c, o.whitening);
            runs.push_back(run);
        }
    for (int rep = 0; rep < 2; ++rep) {
        rt::Generator gen(seed++);
        Run run{REMAX, {}, {}, holey_mask<S>(gen, B, T), {}, {}, {}, {}, {}};
        run.r = poison<S>(gen.normal<S>(B, T), run.m);
        run.scores = gen.normal<S>(B, 1);  // the greedy baselines
        auto& c = tr.add<S>("remax");
        c.in("token_rewards", run.r).in("mask", run.m).in("baseline", Mat<S>(run.scores));
        runs.push_back(run);
    }
    tr.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t i = 0; i < runs.size(); ++i) {
        INFO("case " << i << " kind " << runs[i].kind);
        const auto& r = runs[i];
        if (r.kind == RPP) {
            const auto out = rr::reinforce_pp_advantages(r.r, r.m, r.rpp);
            CHECK(rlpo_test::max_rel_err(out.advantages, tr.out(i, "adv")) < tol);
            CHECK(rlpo_test::max_rel_err(out.returns, tr.out(i, "returns")) < tol);
        } else if (r.kind == RPPB) {
            const Mat<S> a = rr::reinforce_pp_baseline_advantages(r.scores, r.groups, r.m, r.rppb);
            CHECK(rlpo_test::max_rel_err(a, tr.out(i, "adv")) < tol);
        } else if (r.kind == REMAX) {
            const auto out = rr::remax_advantages(r.r, r.scores, r.m);
            CHECK(rlpo_test::max_rel_err(out.advantages, tr.out(i, "adv")) < tol);
            CHECK(rlpo_test::max_rel_err(out.returns, tr.out(i, "returns")) < tol);
        } else {
            const auto out = rr::gae_advantages(r.r, r.v, r.m, r.gae);
            CHECK(rlpo_test::max_rel_err(out.advantages, tr.out(i, "adv")) < tol);
            CHECK(rlpo_test::max_rel_err(out.returns, tr.out(i, "returns")) < tol);
        }
    }
}

TEST_CASE("gae: λ = 1 is discounted return minus value, λ = 0 the TD error",
          "[rollout][returns][properties]") {
    rt::Generator gen(11);
    const Index B = 6, T = 10;
    const Mat<double> m = gen.mask(B, T, 1, true), r = gen.normal(B, T), v = gen.normal(B, T);
    for (double gamma : {1.0, 0.97, 0.5}) {
        GAEOptions o;
        o.gamma = gamma;
        o.whiten = false;
        o.lambda = 1.0;
        const auto one = rr::gae_advantages(r, v, m, o);
        ReinforcePPOptions ro;
        ro.gamma = gamma;
        ro.whiten = false;
        const Mat<double> G = rr::reinforce_pp_advantages(r, m, ro).returns;
        o.lambda = 0.0;
        const auto zero = rr::gae_advantages(r, v, m, o);
        for (Index i = 0; i < B; ++i)
            for (Index t = 0; t < T; ++t) {
                if (m(i, t) == 0) {
                    CHECK(one.advantages(i, t) == 0.0);
                    CHECK(one.returns(i, t) == 0.0);
                    continue;
                }
                CHECK(one.advantages(i, t) == Approx(G(i, t) - v(i, t)).margin(1e-12));
                CHECK(one.returns(i, t) == Approx(G(i, t)).margin(1e-12));  // λ = 1: returns = G
                const double vnext = (t + 1 < T && m(i, t + 1) != 0) ? v(i, t + 1) : 0.0;
                CHECK(zero.advantages(i, t) ==
                      Approx(r(i, t) + gamma * vnext - v(i, t)).margin(1e-12));
            }
    }
    // closed form: one outcome reward at the end, γ = 1, zero values ⇒ every token's return is it
    Mat<double> mm = Mat<double>::Zero(1, 5);
    mm.leftCols(4).setOnes();
    const Vec<double> sc = Vec<double>::Constant(1, 2.5);
    const Mat<double> rr1 = rr::outcome_token_rewards(sc, mm);
    GAEOptions o;
    o.whiten = false;
    const auto g = rr::gae_advantages(rr1, Mat<double>::Zero(1, 5), mm, o);
    CHECK(g.advantages(0, 0) == 2.5);
    CHECK(g.advantages(0, 3) == 2.5);
    CHECK(g.advantages(0, 4) == 0.0);
}

TEMPLATE_TEST_CASE("gae: long rows, outcome rewards per row, whitening, any thread count",
                   "[rollout][returns][properties]", float, double) {
    // Rows long enough for the blocked recursion (T = 300: 37 blocks of 8 and a tail): plain
    // responses, prompt-and-response segments, rows with holes (the general loop), empty rows
    // and fractional weights. Reference: the token-by-token recursion in long double, and the
    // whitening of the stored unwhitened values by its definition.
    using S = TestType;
    using LD = long double;
    rt::Generator gen(31);
    const Index B = 41, T = 300;
    Mat<S> m = Mat<S>::Zero(B, T);
    const Mat<S> v = gen.normal<S>(B, T), u = gen.uniform<S>(B, 3, 0.0, 1.0);
    Vec<S> score(B);
    for (Index i = 0; i < B; ++i) {
        score(i) = static_cast<S>(4 * u(i, 0) - 2);
        const auto len = static_cast<Index>(static_cast<double>(u(i, 1)) * T);
        const Index start = i % 4 == 1 ? static_cast<Index>(static_cast<double>(u(i, 2)) * len) : 0;
        for (Index t = start; t < len; ++t) m(i, t) = i % 5 == 2 ? S(0.5) : S(1);
        if (i % 6 == 3 && len > 20) m(i, len / 2) = m(i, len / 3) = 0;  // holes
    }
    m.row(0).setOnes();
    m.row(1).setZero();
    score(1) = std::numeric_limits<S>::quiet_NaN();  // an empty row's reward is never read
    const Mat<S> r_tok = rr::outcome_token_rewards(
        score.unaryExpr([](S x) { return std::isfinite(x) ? x : S(0); }), m);
    for (const GAEOptions& base : {GAEOptions{}, GAEOptions::openrlhf(), GAEOptions::ppo_paper()}) {
        GAEOptions o = base;
        o.whiten = false;
        const auto seq = rr::gae_advantages(score, v, m, o);
        // [B, 1] outcome rewards are the token rewards of the last unmasked token, exactly
        const auto tok = rr::gae_advantages(r_tok, v, m, o);
        CHECK(seq.advantages == tok.advantages);
        CHECK(seq.returns == tok.returns);
        // against the token-by-token recursion
        double err = 0.0;
        for (Index i = 0; i < B; ++i) {
            LD next_v = 0, next_a = 0;
            for (Index t = T - 1; t >= 0; --t) {
                if (m(i, t) == 0) {
                    CHECK(seq.advantages(i, t) == S(0));
                    CHECK(seq.returns(i, t) == S(0));
                    continue;
                }
                const LD delta = LD(r_tok(i, t)) + LD(o.gamma) * next_v - LD(v(i, t));
                next_a = delta + LD(o.gamma) * LD(o.lambda) * next_a;
                next_v = LD(v(i, t));
                const auto rel = [](LD x, S y) {
                    return static_cast<double>(std::abs(x - LD(y)) / (1 + std::abs(x)));
                };
                err = std::max({err, rel(next_a, seq.advantages(i, t)),
                                rel(next_a + next_v, seq.returns(i, t))});
            }
        }
        // the outputs' rounding to S, and the recursion's own in double (≲ T·2⁻⁵³)
        INFO("max relative error " << err);
        CHECK(err < 4 * std::numeric_limits<S>::epsilon() + 1e-13);
        // whitened: (x − μ)/sqrt(v + ε) of the stored values (checked above against the
        // long-double recursion), weights m, by the definition
        o.whiten = true;
        const auto w = rr::gae_advantages(score, v, m, o);
        CHECK(w.returns == seq.returns);
        LD n = 0, sum = 0, ss = 0;
        for (Index k = 0; k < m.size(); ++k)
            n += m.data()[k], sum += m.data()[k] * LD(seq.advantages.data()[k]);
        const LD mu = sum / n;
        for (Index k = 0; k < m.size(); ++k) {
            const LD d = LD(seq.advantages.data()[k]) - mu;
            ss += m.data()[k] * d * d;
        }
        LD var = ss / n;
        if (o.whitening.unbiased) var *= n / (n - 1);
        const LD den = o.whitening.eps_as_floor ? std::sqrt(std::max(var, LD(o.whitening.epsilon)))
                                                : std::sqrt(var + LD(o.whitening.epsilon));
        double werr = 0.0;
        for (Index k = 0; k < m.size(); ++k) {
            const LD ref = m.data()[k] == 0 ? 0 : (LD(seq.advantages.data()[k]) - mu) / den;
            werr = std::max(werr, static_cast<double>(std::abs(ref - LD(w.advantages.data()[k]))));
        }
        INFO("max whitening error " << werr);
        CHECK(werr < 8 * std::numeric_limits<S>::epsilon() + 1e-13);
        // bitwise the same for 1, 2 and 3 threads
        for (int k : {1, 2, 3}) {
            const auto wk =
                rlpo_test::with_threads(k, [&] { return rr::gae_advantages(score, v, m, o); });
            CHECK(wk.advantages == w.advantages);
            CHECK(wk.returns == w.returns);
        }
    }
}

TEST_CASE("whitening: moments, degenerate counts, masked entries never read",
          "[rollout][returns][properties]") {
    rt::Generator gen(12);
    const Mat<double> m = gen.mask(8, 6, 1, true);
    Mat<double> x = poison<double>(gen.normal(8, 6, 3.0, 1.0), m);
    const Mat<double> w = rr::whiten(x, m, WhitenOptions{true, 0.0, false, true});
    double n = 0, s = 0, ss = 0;
    for (Index k = 0; k < w.size(); ++k) {
        if (m.data()[k] == 0) {
            CHECK(w.data()[k] == 0.0);
            continue;
        }
        n += 1, s += w.data()[k], ss += w.data()[k] * w.data()[k];
    }
    CHECK(std::abs(s / n) < 1e-12);
    CHECK(ss / (n - 1) == Approx(1.0).epsilon(1e-12));  // unbiased variance 1
    const Mat<double> wp = rr::whiten(x, m, WhitenOptions{false, 0.0, false, true});
    CHECK(ss / n != Approx(1.0).epsilon(1e-6));
    double ssp = 0;
    for (Index k = 0; k < wp.size(); ++k)
        if (m.data()[k] != 0) ssp += wp.data()[k] * wp.data()[k];
    CHECK(ssp / n == Approx(1.0).epsilon(1e-12));  // population variance 1
    // one unmasked token, or none: 0 (verl raises)
    Mat<double> one = Mat<double>::Zero(2, 3);
    one(1, 1) = 1;
    CHECK(rr::whiten(Mat<double>::Constant(2, 3, 5.0), one).isZero(0));
    CHECK(rr::whiten(Mat<double>::Constant(2, 3, 5.0), Mat<double>::Zero(2, 3)).isZero(0));
    // shift_mean = false adds the mean back
    const Mat<double> keep = rr::whiten(x, m, WhitenOptions{true, 0.0, false, false});
    double mu = 0;
    for (Index k = 0; k < x.size(); ++k)
        if (m.data()[k] != 0) mu += x.data()[k] / n;
    for (Index k = 0; k < x.size(); ++k)
        if (m.data()[k] != 0) CHECK(keep.data()[k] == Approx(w.data()[k] + mu).margin(1e-12));
    // REINFORCE++-baseline: every token of a response carries the same advantage; all-equal
    // groups and singletons (default) give 0 before whitening, so they share one value after it
    const auto b = rollout_test::grouped_batch(13, 5, 4);
    const Mat<double> mb = gen.mask(b.n(), 5, 1, false);
    const Mat<double> A = rr::reinforce_pp_baseline_advantages(b.scores, b.groups, mb);
    for (Index i = 0; i < b.n(); ++i)
        for (Index t = 0; t < 5; ++t)
            if (mb(i, t) != 0) CHECK(A(i, t) == A(i, 0));
    CHECK(A(b.groups.begin(1), 0) == A(b.groups.begin(2), 0));  // singleton and all-equal group
}

TEST_CASE("remax: outcome reward minus the greedy baseline on every token",
          "[rollout][returns][properties]") {
    rt::Generator gen(21);
    const Mat<double> m = gen.mask(5, 7, 1, true);
    const Vec<double> s = gen.normal(5, 1).col(0), b = gen.normal(5, 1).col(0);
    const Mat<double> r = rr::outcome_token_rewards(s, m);
    const auto out = rr::remax_advantages(r, b, m);
    for (Index i = 0; i < 5; ++i)
        for (Index t = 0; t < 7; ++t)
            CHECK(out.advantages(i, t) == (m(i, t) != 0 ? Approx(s(i) - b(i)) : Approx(0.0)));
    // reward-to-go equals the undiscounted REINFORCE++ return on prefix masks
    ReinforcePPOptions o;
    o.whiten = false;
    const Mat<double> rn = gen.normal(5, 7);
    CHECK((rr::remax_advantages(rn, b, m).returns - rr::reinforce_pp_advantages(rn, m, o).returns)
              .cwiseAbs()
              .maxCoeff() < 1e-12);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::remax_advantages(rn, Vec<double>::Zero(4), m),
                                    "rollout::remax_advantages(): greedy_baseline: expected 5 "
                                    "entries (rows of token_rewards), given 4");
    // finite rewards whose reward-to-go (or minus the baseline) overflows: numerical_error
    Mat<double> huge = Mat<double>::Zero(5, 7);
    huge(2, 0) = 1e308;
    huge(2, 1) = 1e308;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::remax_advantages(huge, b, Mat<double>::Ones(5, 7)),
                                 "overflows at [2, 0]");
    Mat<float> hf = Mat<float>::Zero(1, 2);
    hf << 3e38F, 0.0F;
    Vec<float> bf(1);
    bf << -3e38F;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::remax_advantages(hf, bf, Mat<float>::Ones(1, 2)),
                                 "overflows at [0, 0]");
}

TEST_CASE("token advantages: bad input gives the documented error",
          "[rollout][returns][bad-input]") {
    const Mat<double> r = Mat<double>::Ones(2, 3), m = Mat<double>::Ones(2, 3), small(2, 2);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::reinforce_pp_advantages(r, small),
        "rollout::reinforce_pp_advantages(): mask: expected shape [2, 3]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_advantages(r, small, m),
                                    "rollout::gae_advantages(): values: expected shape [2, 3]");
    Mat<double> bad = r;
    bad(1, 2) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::reinforce_pp_advantages(bad, m),
                                    "token_rewards: non-finite value nan at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_advantages(r, bad, m),
                                    "values: non-finite value nan at [1, 2]");
    Mat<double> m2 = m;
    m2(1, 2) = 0;  // the NaN is masked: fine
    CHECK_NOTHROW(rr::gae_advantages(r, bad, m2));
    // one outcome reward per row ([B, 1]): its row count, and a non-finite one under the mask
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::gae_advantages(Vec<double>::Ones(3), r, m),
        "rollout::gae_advantages(): token_rewards: expected [B, T] or [B, 1] with B = 2");
    Vec<double> s2 = Vec<double>::Ones(2);
    s2(1) = nan_d;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_advantages(s2, r, m),
                                    "token_rewards: non-finite value nan at [1, 0]");
    m2.row(1).setZero();  // a row without tokens does not read its reward
    CHECK_NOTHROW(rr::gae_advantages(s2, r, m2));
    GAEOptions o;
    o.lambda = 1.5;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_advantages(r, r, m, o),
                                    "lambda: must be in [0, 1], given 1.5");
    o = {};
    o.gamma = -0.1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_advantages(r, r, m, o), "gamma: must be in [0, 1]");
    o = {};
    o.whitening.epsilon = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_advantages(r, r, m, o),
                                    "whitening.epsilon: must be >= 0");
    Vec<double> s(3);
    s << 1, 2, 3;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::reinforce_pp_baseline_advantages(s, rr::Groups::equal(3, 3), m),
        "mask: expected 3 rows (one per score), given 2");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::reinforce_pp_baseline_advantages(s, rr::Groups::equal(2, 2), m),
        "scores: has 3 entries, but the groups cover 2");
    Mat<double> mneg = m;
    mneg(0, 0) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::whiten(r, mneg),
                                    "rollout::whiten(): mask: entries must be finite and >= 0");
    // the mask is checked in each estimator's row pass: the first bad entry, named as
    // check_mask names it, before a non-finite value elsewhere in the batch
    Mat<double> mbad = Mat<double>::Ones(m.rows(), m.cols()), rnan = r;
    mbad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    mbad(1, 0) = -0.5;
    rnan(0, 1) = std::numeric_limits<double>::infinity();
    const std::string want = "mask: entries must be finite and >= 0, given -0.5 at [1, 0]";
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::whiten(rnan, mbad), "rollout::whiten(): " + want);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::reinforce_pp_advantages(rnan, mbad),
                                    "rollout::reinforce_pp_advantages(): " + want);
    Vec<double> sc2(2);
    sc2 << 1, 2;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rr::reinforce_pp_baseline_advantages(sc2, rr::Groups::equal(2, 2), mbad),
        "rollout::reinforce_pp_baseline_advantages(): " + want);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_advantages(rnan, r, mbad),
                                    "rollout::gae_advantages(): " + want);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_plan(rnan, r, mbad), "rollout::gae_plan(): " + want);
    GAEOptions raw;
    raw.whiten = false;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_plan(rnan, r, mbad, raw),
                                    "rollout::gae_plan(): " + want);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::remax_advantages(rnan, sc2, mbad),
                                    "rollout::remax_advantages(): " + want);
}

#if defined(RLPO_USE_OPENMP)
TEST_CASE("token advantages: bitwise identical with 1 and several threads",
          "[rollout][returns][threads]") {
    rt::Generator gen(99);
    const Index B = 300, T = 40;  // above the parallel threshold
    const Mat<float> m = gen.mask<float>(B, T, 1, true), r = gen.normal<float>(B, T),
                     v = gen.normal<float>(B, T);
    const auto b = rollout_test::grouped_batch(5, 60, 5);
    const Mat<float> mb = gen.mask<float>(b.n(), T, 1, true);
    const auto run = [&] {
        return std::make_tuple(rr::gae_advantages(r, v, m, GAEOptions::ppo_paper()).advantages,
                               rr::reinforce_pp_advantages(r, m).advantages, rr::whiten(r, m),
                               rr::reinforce_pp_baseline_advantages(b.scores, b.groups, mb),
                               rr::broadcast_to_tokens(b.scores, mb));
    };
    const auto one = rlpo_test::with_threads(1, run), many = rlpo_test::with_threads(4, run);
    CHECK(std::get<0>(one) == std::get<0>(many));
    CHECK(std::get<1>(one) == std::get<1>(many));
    CHECK(std::get<2>(one) == std::get<2>(many));
    CHECK(std::get<3>(one) == std::get<3>(many));
    CHECK(std::get<4>(one) == std::get<4>(many));
}
#endif

TEST_CASE("whitening and GAE: huge values stay finite or overflow loudly",
          "[rollout][returns][bad_input]") {
    // whitening is scale invariant (ε negligible at these scales): x·1e200 (whose squares
    // overflow) and huge mask weights give the whitened x
    rt::Generator gen(77);
    const Mat<double> m = gen.mask(5, 6, 1, true);
    const Mat<double> x = gen.normal(5, 6, 1.0, 2.0);
    const WhitenOptions o{true, 0.0, false, true};
    const Mat<double> w = rr::whiten(x, m, o);
    const Mat<double> wc = rr::whiten(Mat<double>(x * 1e200), m, o);
    REQUIRE(wc.allFinite());
    CHECK(rlpo_test::max_rel_err(wc, w) < 1e-12);
    // mask weights ×1e300 with values ×1e10 (Σ m·x overflows): with the population variance
    // (N = Σ m enters the unbiased correction, so only the population form is weight-scale
    // invariant) the whitened values are those of the unit mask
    const WhitenOptions pop{false, 0.0, false, true};
    const Mat<double> wp = rr::whiten(x, m, pop);
    const Mat<double> wm = rr::whiten(Mat<double>(x * 1e10), Mat<double>(m * 1e300), pop);
    REQUIRE(wm.allFinite());
    CHECK(rlpo_test::max_rel_err(wm, wp) < 1e-12);
    // one heavy weight and ε = 0: the light token's whitened value sqrt((1 − p)/p), p = its
    // weight share (≈ 4.6e41 here), fits a double but not a float (numerical_error, never
    // −inf); the heavy token's is −sqrt(p/(1 − p))
    {
        Mat<float> xf(1, 2), mf(1, 2);
        xf << 0.0F, 1.0F;
        mf << 3e38F, std::numeric_limits<float>::denorm_min();
        RLPO_REQUIRE_NUMERICAL_ERROR(rr::whiten(xf, mf, pop), "the whitened value at [0, 1]");
        const Mat<double> md = mf.cast<double>();
        const Mat<double> wd = rr::whiten(Mat<double>(xf.cast<double>()), md, pop);
        const double p = md(0, 1) / (md(0, 0) + md(0, 1));
        CHECK(wd(0, 1) == Approx(std::sqrt((1 - p) / p)).epsilon(1e-12));
        CHECK(wd(0, 0) == Approx(-std::sqrt(p / (1 - p))).epsilon(1e-12));
        // the same whitening inside REINFORCE++ (γ = 0: the returns are the rewards) is
        // reported under that function's name
        ReinforcePPOptions rp;
        rp.gamma = 0.0;
        rp.whitening = pop;
        std::string what;
        try {
            rr::reinforce_pp_advantages(xf, mf, rp);
        } catch (const rlpo::numerical_error& e) {
            what = e.what();
        }
        CHECK(what.find("reinforce_pp_advantages") != std::string::npos);
        CHECK(what.find("the whitened value at [0, 1]") != std::string::npos);
        // and inside GAE (γ = 0, values 0: Â = the rewards), whose row pass takes the moments
        // on its own path (the fast row), its plan and a piece formed with the plan
        GAEOptions gp;
        gp.gamma = 0.0;
        gp.whitening = pop;
        const Mat<double> zd = Mat<double>::Zero(1, 2);
        const auto gd = rr::gae_advantages(Mat<double>(xf.cast<double>()), zd, md, gp);
        CHECK(gd.advantages(0, 1) == Approx(std::sqrt((1 - p) / p)).epsilon(1e-12));
        CHECK(gd.advantages(0, 0) == Approx(-std::sqrt(p / (1 - p))).epsilon(1e-12));
        const rr::GAEPlan plan = rr::gae_plan(Mat<double>(xf.cast<double>()), zd, md, gp);
        rr::TokenAdvantages<double> piece;
        rr::gae_advantages(plan, Mat<double>(xf.cast<double>()), zd, md, piece);
        CHECK(piece.advantages == gd.advantages);
        RLPO_REQUIRE_NUMERICAL_ERROR(
            rr::gae_advantages(xf, Mat<float>(Mat<float>::Zero(1, 2)), mf, gp),
            "rollout::gae_advantages(): the whitened value at [0, 1]");
    }
    // GAE whose return 1e308 + 1e308 overflows: numerical_error naming the position
    Mat<double> r = Mat<double>::Zero(1, 2), v = Mat<double>::Zero(1, 2),
                mm = Mat<double>::Ones(1, 2);
    r << 1e308, 1e308;
    GAEOptions g;
    g.whiten = false;
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::gae_advantages(r, v, mm, g), "overflows at [0, 0]");
    RLPO_REQUIRE_NUMERICAL_ERROR(rr::reinforce_pp_advantages(r, mm), "overflows at [0, 0]");
    // one 1e308 reward is fine, and whitened ×1e300-scale advantages stay finite
    r << 0.0, 1e308;
    const auto ok = rr::gae_advantages(r, v, mm);
    CHECK(ok.advantages.allFinite());
    CHECK(ok.returns.allFinite());
}

TEST_CASE("gae plan: pieces whitened with the whole batch's statistics equal the one call",
          "[rollout][returns][properties]") {
    // gae_plan measures the whitening without the [B, T] outputs; gae_advantages(plan, …) on
    // any piece of the batch gives that piece's rows of one gae_advantages call, bit for bit:
    // ordinary values, and values whose whitening sums overflow (the rescaled statistics).
    rt::Generator gen(17);
    const Index B = 11, T = 29;
    Mat<double> m = gen.mask(B, T, 1, true);
    for (Index t = 4; t < 9; ++t) m(3, t) = 0.0;  // a hole: the general recursion
    const Mat<double> scores = gen.normal(B, 1);
    for (const double scale : {1.0, 1e306}) {
        INFO("scale " << scale);
        const Mat<double> v = gen.normal(B, T) * scale, r = gen.normal(B, T) * scale;
        GAEOptions g = GAEOptions::openrlhf();
        g.lambda = 0.5;
        for (int rk = 0; rk < 2; ++rk) {
            const Mat<double>& rew = rk == 0 ? scores : r;
            const auto whole = rr::gae_advantages(rew, v, m, g);
            const rr::GAEPlan plan = rr::gae_plan(rew, v, m, g);
            CHECK(plan.whitening.k > 0);
            for (int k : {1, 2, 3}) {  // the same map for any thread count
                const rr::GAEPlan pk =
                    rlpo_test::with_threads(k, [&] { return rr::gae_plan(rew, v, m, g); });
                CHECK(pk.whitening.mu == plan.whitening.mu);
                CHECK(pk.whitening.k == plan.whitening.k);
                CHECK(pk.whitening.s == plan.whitening.s);
            }
            CHECK((plan.whitening.s != 1.0) == (scale > 1.0));  // Σ m·Â overflows at 1e306
            for (const auto& ch : rlpo_test::uneven_chunks(B)) {
                rr::TokenAdvantages<double> piece;
                rr::gae_advantages(plan, rew.middleRows(ch.first, ch.second),
                                   v.middleRows(ch.first, ch.second),
                                   m.middleRows(ch.first, ch.second), piece);
                CHECK(piece.advantages == whole.advantages.middleRows(ch.first, ch.second));
                CHECK(piece.returns == whole.returns.middleRows(ch.first, ch.second));
            }
        }
    }
    // bad input, named under gae_plan; without whitening the plan measures nothing
    Mat<double> bad = Mat<double>::Ones(B, T);
    bad(0, 0) = std::numeric_limits<double>::quiet_NaN();
    Mat<double> full = m;
    full.row(0).setOnes();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_plan(scores, bad, full),
                                    "rollout::gae_plan(): values: non-finite value nan at [0, 0]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rr::gae_plan(scores, bad, full.topRows(B - 1)),
                                    "rollout::gae_plan(): mask: expected shape");
    GAEOptions off;
    off.whiten = false;
    CHECK(rr::gae_plan(scores, bad, full, off).whitening.k == 0.0);
}
