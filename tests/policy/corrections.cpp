// Rollout IS correction (token / sequence / geometric; truncate / mask), the DeepSeek-V3.2
// off-policy sequence mask and the top-entropy mask. They output constants (no gradient), so
// the four ways are: PyTorch reference, closed forms and properties, their effect on a
// surrogate's gradient, bad input.
#include "policy/policy_support.hpp"

#include <rlpo/policy/corrections.hpp>
#include <rlpo/policy/reinforce.hpp>

using namespace policy_test;
using rlpo::policy::ISLevel;
using rlpo::policy::ISMode;
using rlpo::policy::RolloutCorrectionOptions;
namespace rp = rlpo::policy;

namespace {
std::vector<RolloutCorrectionOptions> option_sets() {
    std::vector<RolloutCorrectionOptions> v;
    for (ISLevel l : {ISLevel::Token, ISLevel::Sequence, ISLevel::GeometricMean})
        for (ISMode md : {ISMode::Truncate, ISMode::Mask}) {
            RolloutCorrectionOptions o;
            o.level = l;
            o.mode = md;
            v.push_back(o);
            o.upper = 1.3;
            o.lower = 0.9;
            o.log_ratio_clamp = 3.0;
            v.push_back(o);
        }
    return v;
}
const char* level_name(ISLevel l) {
    return l == ISLevel::Token ? "token" : (l == ISLevel::Sequence ? "sequence" : "geometric");
}
}  // namespace

TEMPLATE_TEST_CASE("corrections: agree with the PyTorch reference", "[policy][corrections][torch]",
                   float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("policy",
                                  std::string("corrections_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        int kind;
        Mat<S> a, b, adv, mask;
        RolloutCorrectionOptions o;
        double param;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 1600;
    for (const auto& o : option_sets()) {
        const Batch bt = spread_batch(seed++, 8, 16, 0.15, false);
        // small per-token mismatches (sequence sums stay moderate), a few large ones
        Mat<double> roll = bt.logp;
        rt::Generator gen(seed);
        for (Index k = 0; k < roll.size(); ++k)
            roll.data()[k] += gen.normal() * (gen.uniform() < 0.1 ? 1.0 : 0.05);
        Run r{0, bt.logp.cast<S>(), roll.cast<S>(), bt.adv.cast<S>(), bt.mask.cast<S>(), o, 0};
        r.mask(2, 3) = 0;
        r.b(2, 3) = std::numeric_limits<S>::quiet_NaN();
        auto& c = ref.add<S>("rollout_correction");
        c.in("old_logp", r.a).in("rollout_logp", r.b).in("mask", r.mask);
        c.s("level", level_name(o.level)).s("mode", o.mode == ISMode::Mask ? "mask" : "truncate");
        c.p("upper", o.upper).p("log_ratio_clamp", o.log_ratio_clamp);
        if (o.lower) c.p("lower", *o.lower);
        runs.push_back(std::move(r));
    }
    for (double delta : {0.0, 0.05, 0.3}) {
        const Batch bt = spread_batch(seed++, 8, 16, 0.15, false, true);
        Mat<double> roll = bt.logp;
        rt::Generator gen(seed);
        for (Index k = 0; k < roll.size(); ++k)
            roll.data()[k] += std::abs(gen.normal()) * 0.2 - 0.05;
        Run r{1, bt.logp.cast<S>(), roll.cast<S>(), bt.adv.cast<S>(), bt.mask.cast<S>(), {}, delta};
        auto& c = ref.add<S>("off_policy_sequence_mask");
        c.in("logp", r.a)
            .in("rollout_logp", r.b)
            .in("advantages", r.adv)
            .in("mask", r.mask)
            .p("delta", delta);
        runs.push_back(std::move(r));
    }
    for (double rho : {0.2, 0.5, 1.0}) {
        const Batch bt = spread_batch(seed++, 8, 16, 0.15, false);
        rt::Generator gen(seed);
        Run r{2, gen.uniform<S>(8, 16, 0.0, 3.0), {}, {}, bt.mask.cast<S>(), {}, rho};
        auto& c = ref.add<S>("top_entropy_mask");
        c.in("entropy", r.a).in("mask", r.mask).p("keep_fraction", rho);
        runs.push_back(std::move(r));
    }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        if (r.kind == 0) {
            const auto c = rp::rollout_correction(r.a, r.b, r.mask, r.o);
            CHECK(rlpo_test::max_rel_err(c.weights, ref.out(k, "weights")) < tol);
            CHECK(rlpo_test::max_rel_err(c.mask, ref.out(k, "mask")) == 0.0);
            for (const auto& e : c.metrics) {
                INFO(e.first);
                CHECK(rlpo_test::rel_err(e.second.value(), ref.scalar(k, e.first), 1e-12) < tol);
            }
            CHECK(c.metrics.size() == (r.o.mode == ISMode::Mask ? 4u : 3u));
        } else if (r.kind == 1) {
            const auto c = rp::off_policy_sequence_mask(r.a, r.b, r.adv, r.mask, r.param);
            CHECK(rlpo_test::max_rel_err(c.mask, ref.out(k, "mask")) == 0.0);
            CHECK(rlpo_test::rel_err(c.metrics["off_policy_masked_fraction"],
                                     ref.scalar(k, "off_policy_masked_fraction"), 1e-12) < tol);
        } else {
            const auto c = rp::top_entropy_mask(r.a, r.mask, r.param);
            CHECK(rlpo_test::max_rel_err(c.mask, ref.out(k, "mask")) == 0.0);
            CHECK(rlpo_test::rel_err(c.metrics["entropy_mask_kept_fraction"],
                                     ref.scalar(k, "entropy_mask_kept_fraction"), 1e-12) < tol);
        }
    }
}

TEST_CASE("corrections: closed forms and properties", "[policy][corrections][properties]") {
    SECTION(
        "token TIS: w = min(exp(old − rollout), C); sequence: product; geometric: mean in log "
        "space") {
        Mat<double> old(1, 3), roll = Mat<double>::Zero(1, 3), m = Mat<double>::Ones(1, 3);
        old << 0.1, 1.0, -0.4;
        RolloutCorrectionOptions o;
        const auto t = rp::rollout_correction(old, roll, m, o);
        CHECK(t.weights(0, 0) == Approx(std::exp(0.1)));
        CHECK(t.weights(0, 1) == 2.0);
        CHECK(t.weights(0, 2) == Approx(std::exp(-0.4)));
        CHECK(t.metrics["rollout_is_ratio_fraction_high"] == Approx(1.0 / 3));
        CHECK(t.mask == m);
        o.level = ISLevel::Sequence;
        const auto sq = rp::rollout_correction(old, roll, m, o);
        CHECK(sq.weights(0, 0) == 2.0);  // e^0.7 ≈ 2.01, truncated at C = 2
        CHECK((sq.weights.array() == sq.weights(0, 0)).all());
        o.level = ISLevel::GeometricMean;
        const auto g = rp::rollout_correction(old, roll, m, o);
        CHECK(g.weights(0, 1) == Approx(std::exp(0.7 / 3)));
        o.mode = ISMode::Mask;
        o.upper = 1.2;  // exp(0.7/3) ≈ 1.26 > 1.2: the whole row is rejected
        const auto mk = rp::rollout_correction(old, roll, m, o);
        CHECK(mk.mask.isZero());
        CHECK(mk.weights.isZero());
        CHECK(mk.metrics["rollout_rs_masked_fraction"] == 1.0);
    }
    SECTION("weights = 1 when trainer and rollout agree; masked entries are never read") {
        const Batch b = spread_batch(30);
        Mat<double> roll = b.logp, m = b.mask;
        m(0, 1) = 0;
        roll(0, 1) = std::numeric_limits<double>::quiet_NaN();
        for (ISLevel l : {ISLevel::Token, ISLevel::Sequence, ISLevel::GeometricMean}) {
            RolloutCorrectionOptions o;
            o.level = l;
            const auto c = rp::rollout_correction(b.logp, roll, m, o);
            CHECK(c.weights == m);
            CHECK(c.metrics["rollout_is_mean"] == Approx(1.0));
        }
    }
    SECTION("the weights multiply a surrogate's per-token loss and gradient") {
        const Batch b = spread_batch(31);
        Mat<double> roll = b.logp + Mat<double>::Constant(b.logp.rows(), b.logp.cols(), 0.3);
        const auto c = rp::rollout_correction(b.logp, roll, b.mask, {});  // w = e^−0.3 everywhere
        rlpo::policy::TokenWeights<double> w;
        w.emplace(c.weights);
        const auto weighted = rp::reinforce(b.logp, b.adv, c.mask, {}, {}, w);
        const auto plain = rp::reinforce(b.logp, b.adv, b.mask);
        CHECK(weighted.value == Approx(std::exp(-0.3) * plain.value).epsilon(1e-13));
        CHECK(rlpo_test::max_rel_err(weighted.grad, Mat<double>(std::exp(-0.3) * plain.grad)) <
              1e-13);
    }
    SECTION("off-policy mask: positive advantages are always kept; δ = +inf keeps everything") {
        const Batch b = spread_batch(32, 8, 16, 0.15, false, true);
        const Mat<double> roll = b.logp.array() + 2.0;  // mean(rollout − logp) = 2 in every row
        const auto drop = rp::off_policy_sequence_mask(b.logp, roll, b.adv, b.mask, 1.0);
        for (Index k = 0; k < b.mask.size(); ++k)
            CHECK(drop.mask.data()[k] == (b.adv.data()[k] >= 0 ? b.mask.data()[k] : 0.0));
        const auto keep = rp::off_policy_sequence_mask(b.logp, roll, b.adv, b.mask,
                                                       std::numeric_limits<double>::infinity());
        CHECK(keep.mask == b.mask);
        CHECK(keep.metrics["off_policy_masked_fraction"] == 0.0);
    }
    SECTION("top-entropy mask keeps ⌈ρ·N⌉-ish of the tokens, the highest ones, ties included") {
        Mat<double> H(1, 10), m = Mat<double>::Ones(1, 10);
        for (Index t = 0; t < 10; ++t) H(0, t) = static_cast<double>(t);
        const auto k = rp::top_entropy_mask(H, m, 0.2);  // quantile 0.8 of 0..9 = 7.2: keeps 8, 9
        CHECK(k.mask.sum() == 2.0);
        CHECK(k.mask(0, 9) == 1.0);
        CHECK(k.mask(0, 8) == 1.0);
        const auto all =
            rp::top_entropy_mask(Mat<double>::Constant(2, 3, 1.5), Mat<double>::Ones(2, 3), 0.2);
        CHECK(all.mask.sum() == 6.0);  // all tied at the threshold
        CHECK(rp::top_entropy_mask(H, Mat<double>::Zero(1, 10)).mask.isZero());
    }
}

TEST_CASE("corrections: bad input gives the documented error", "[policy][corrections][bad-input]") {
    const Mat<double> x = Mat<double>::Zero(2, 3), m = Mat<double>::Ones(2, 3),
                      y = Mat<double>::Zero(2, 4);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::rollout_correction(x, y, m),
                                    "policy::rollout_correction(): rollout_logp: expected shape "
                                    "[2, 3] (same as old_logp), given [2, 4]");
    RolloutCorrectionOptions o;
    o.upper = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::rollout_correction(x, x, m, o), "upper: must be > 0");
    o = {};
    o.lower = 3.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::rollout_correction(x, x, m, o),
                                    "lower: must be in [0, upper]");
    o = {};
    o.log_ratio_clamp = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::rollout_correction(x, x, m, o),
                                    "log_ratio_clamp: must be > 0");
    Mat<double> bad = x;
    bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::rollout_correction(x, bad, m),
                                    "rollout_logp: NaN at [1, 2]");
    const Mat<double> ninf = Mat<double>::Constant(2, 3, -std::numeric_limits<double>::infinity());
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::rollout_correction(ninf, ninf, m), "undefined log-ratio");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::off_policy_sequence_mask(x, x, y, m, 0.1),
                                    "advantages: expected shape");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::off_policy_sequence_mask(x, x, x, m, std::nan("")),
                                    "delta: must not be NaN");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::off_policy_sequence_mask(x, bad, x, m, 0.1),
                                    "rollout_logp: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::top_entropy_mask(x, m, 0.0),
                                    "keep_fraction: must be in (0, 1]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::top_entropy_mask(bad, m), "entropy: NaN at [1, 2]");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::top_entropy_mask(x, y), "mask: expected shape");
    Mat<double> negm = m;
    negm(0, 0) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rp::rollout_correction(x, x, negm),
                                    "mask: entries must be finite and >= 0");
}
