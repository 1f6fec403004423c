// The training step: FD on every gradient (logp, logits, values), PyTorch autograd of the whole
// composite loss, the step equal to the sum of its parts (each called on its own), micro-batch
// and data-parallel shard invariance, metrics equal to the parts' metrics, and bad input.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/rollout/tokens.hpp>
#include <rlpo/testing/random.hpp>
#include <rlpo/train/step.hpp>

#include <cmath>
#include <limits>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::train::KLPlacement;
using rlpo::train::StepInputs;
using rlpo::train::StepOptions;
using rlpo::train::TrainingStep;
namespace rt = rlpo::testing;

namespace {

template <class S>
struct Data {
    Mat<S> logp, old, ref, adv, mask, logits, values, old_values, returns;
    Index V = 5;
};

template <class S>
Data<S> make_data(std::uint64_t seed, Index B = 6, Index T = 7, Index V = 5) {
    rt::Generator gen(seed);
    Data<S> d;
    d.V = V;
    d.logp = gen.logprobs<S>(B, T);
    d.old = gen.perturbed<S>(d.logp, 0.3);
    d.ref = gen.perturbed<S>(d.logp, 0.8);
    d.adv = gen.normal<S>(B, T);
    d.mask = gen.mask<S>(B, T, 1, true);
    d.mask.row(0).setOnes();
    d.logits = gen.logits<S>(B * T, V);
    d.values = gen.normal<S>(B, T);
    d.old_values = gen.perturbed<S>(d.values, 0.6);
    d.returns = gen.normal<S>(B, T);
    // masked garbage: never read
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t)
            if (d.mask(i, t) == 0) {
                d.logp(i, t) = std::numeric_limits<S>::quiet_NaN();
                d.values(i, t) = std::numeric_limits<S>::quiet_NaN();
                d.logits.row(i * T + t).setConstant(std::numeric_limits<S>::quiet_NaN());
            }
    return d;
}

/// The inputs every variant reads, over rows [r0, r0 + n) of the data.
template <class S>
void fill_common(StepInputs<S>& in, const Data<S>& d, Index r0, Index n, bool logits, bool values) {
    const Index T = d.logp.cols();
    in.logp = d.logp.middleRows(r0, n);
    in.mask = d.mask.middleRows(r0, n);
    in.old_logp = d.old.middleRows(r0, n);
    in.ref_logp = d.ref.middleRows(r0, n);
    if (logits) in.logits = d.logits.middleRows(r0 * T, n * T);
    if (values) {
        in.values = d.values.middleRows(r0, n);
        in.old_values = d.old_values.middleRows(r0, n);
    }
}

/// Inputs over rows [r0, r0 + n) of the data (a micro-batch when n < B).
template <class S>
void fill(StepInputs<S>& in, const Data<S>& d, Index r0, Index n, bool logits, bool values) {
    fill_common(in, d, r0, n, logits, values);
    in.advantages = d.adv.middleRows(r0, n);
    if (values) in.returns = d.returns.middleRows(r0, n);
}

/// The same rows with GAE inside the step: the rewards' rows and the whole batch's plan
/// instead of advantages and returns (the values and old values given).
template <class S>
void fill_gae(StepInputs<S>& in, const Data<S>& d, Index r0, Index n, const Mat<S>& rewards,
              const rlpo::rollout::GAEPlan& plan) {
    fill_common(in, d, r0, n, false, true);
    in.rewards = rewards.middleRows(r0, n);
    in.gae = &plan;
}

StepOptions full_options(Aggregation mode) {
    StepOptions o;
    o.policy.vanilla = rlpo::policy::PPOClipOptions::verl();
    o.kl = rlpo::penalties::KLOptions::verl();
    o.kl_coef = 0.05;
    o.entropy_coef = 0.01;
    o.value_coef = 0.5;
    o.value.clip = 0.5;
    o.norm.mode = mode;
    return o;
}

}  // namespace

TEST_CASE("training step: gradients equal central finite differences", "[rollout][step][fd]") {
    Data<double> d = make_data<double>(7);
    for (Aggregation mode : rlpo_test::all_modes()) {
        INFO(rlpo::to_string(mode));
        const StepOptions o = full_options(mode);
        const TrainingStep<double> step(o);
        StepInputs<double> in;
        fill(in, d, 0, d.logp.rows(), true, true);
        const auto r = step(in);
        REQUIRE(r.grad_logits.rows() == d.logits.rows());
        REQUIRE(r.grad_values.rows() == d.values.rows());
        const auto loss_with = [&](Mat<double>& target, const Mat<double>& x) {
            const Mat<double> keep = target;
            target = x;
            StepInputs<double> in2;
            fill(in2, d, 0, d.logp.rows(), true, true);
            const double v = step(in2, {rlpo::no_grad<double>(), rlpo::no_grad<double>(),
                                        rlpo::no_grad<double>()})
                                 .loss;
            target = keep;
            return v;
        };
        // skip masked entries (NaN inputs; gradient checked to be exactly 0 below) and kinks
        const auto skip_lp = [&](Index k) {
            if (d.mask.data()[k] == 0) return true;
            const double lr = d.logp.data()[k] - d.old.data()[k], ratio = std::exp(lr);
            return std::abs(ratio - 0.8) < 1e-4 || std::abs(ratio - 1.2) < 1e-4 ||
                   std::abs(ratio - 3.0) < 1e-4;
        };
        // the central difference of the whole loss carries its rounding, ~ulp(|loss|)/h:
        // the absolute tolerance scales with |loss| (token-sum losses are large)
        const double atol = 1e-9 * std::max(1.0, std::abs(r.loss));
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return loss_with(d.logp, x); },
                                       d.logp, r.grad_logp, 1e-6, atol, skip_lp);
        const Index T = d.logp.cols();
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return loss_with(d.logits, x); },
                                       d.logits, r.grad_logits, 1e-6, atol,
                                       [&](Index k) { return d.mask.data()[k / d.V] == 0; });
        const auto skip_v = [&](Index k) {
            if (d.mask.data()[k] == 0) return true;
            const double dv = d.values.data()[k] - d.old_values.data()[k];
            return std::abs(std::abs(dv) - 0.5) < 1e-4;
        };
        rlpo_test::require_fd_gradient([&](const Mat<double>& x) { return loss_with(d.values, x); },
                                       d.values, r.grad_values, 1e-6, atol, skip_v);
        for (Index i = 0; i < d.mask.rows(); ++i)
            for (Index t = 0; t < T; ++t)
                if (d.mask(i, t) == 0) {
                    CHECK(r.grad_logp(i, t) == 0.0);
                    CHECK(r.grad_values(i, t) == 0.0);
                    CHECK(r.grad_logits.row(i * T + t).isZero(0.0));
                }
    }
}

TEMPLATE_TEST_CASE("training step: agrees with the PyTorch autograd reference",
                   "[rollout][step][torch]", float, double) {
    using S = TestType;
    rlpo_test::TorchReference ref("step", std::string("step_") + (sizeof(S) == 4 ? "f" : "d"));
    struct Run {
        Data<S> d;
        StepOptions o;
        bool logits, values;
    };
    std::vector<Run> runs;
    std::uint64_t seed = 500;
    for (Aggregation mode : rlpo_test::all_modes())
        for (int variant = 0; variant < 3; ++variant) {
            Run r{make_data<S>(seed++), full_options(mode), variant != 1, variant != 2};
            if (variant == 1)
                r.o.entropy_coef = 0.0, r.o.policy.vanilla = rlpo::policy::PPOClipOptions::dapo();
            if (variant == 2) r.o.value_coef = 0.0;
            if (mode == Aggregation::SeqMeanTokenSumNorm) r.o.norm.norm_constant = 30.0;
            if (seed % 2 == 0) r.o.norm.num_tokens = 90.0, r.o.norm.num_seqs = 11.0;
            auto& c = ref.add<S>("training_step");
            // masked garbage goes to torch as 0 (its reference never reads it either)
            Mat<S> lp = r.d.logp, v = r.d.values, z = r.d.logits;
            for (Index k = 0; k < lp.size(); ++k)
                if (r.d.mask.data()[k] == 0) lp.data()[k] = 0, v.data()[k] = 0;
            for (Index k = 0; k < z.size(); ++k)
                if (std::isnan(static_cast<double>(z.data()[k]))) z.data()[k] = 0;
            c.in("logp", lp)
                .in("old_logp", r.d.old)
                .in("ref_logp", r.d.ref)
                .in("advantages", r.d.adv)
                .in("mask", r.d.mask);
            if (r.logits) c.in("logits", z);
            if (r.values)
                c.in("values", v).in("old_values", r.d.old_values).in("returns", r.d.returns);
            const auto& ppo = r.o.policy.vanilla;
            c.p("clip_low", ppo.clip_low)
                .p("clip_high", ppo.clip_high)
                .p("log_ratio_clamp", ppo.log_ratio_clamp);
            if (ppo.dual_clip) c.p("dual_clip", *ppo.dual_clip);
            c.p("kl_coef", r.o.kl_coef)
                .p("entropy_coef", r.o.entropy_coef)
                .p("value_coef", r.o.value_coef);
            c.p("value_clip", *r.o.value.clip);
            c.s("agg", rlpo::to_string(mode));
            if (r.o.norm.num_tokens) c.p("num_tokens", *r.o.norm.num_tokens);
            if (r.o.norm.num_seqs) c.p("num_seqs", *r.o.norm.num_seqs);
            if (r.o.norm.norm_constant) c.p("norm_constant", *r.o.norm.norm_constant);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        INFO("case " << k);
        const Run& r = runs[k];
        const TrainingStep<S> step(r.o);
        StepInputs<S> in;
        fill(in, r.d, 0, r.d.logp.rows(), r.logits, r.values);
        const auto res = step(in);
        CHECK(rlpo_test::rel_err(res.loss, ref.scalar(k, "loss")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad_logp, ref.out(k, "grad_logp")) < tol);
        if (r.logits)
            CHECK(rlpo_test::max_rel_err(res.grad_logits, ref.out(k, "grad_logits")) < tol);
        if (r.values)
            CHECK(rlpo_test::max_rel_err(res.grad_values, ref.out(k, "grad_values")) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["actor/pg_clipfrac"], ref.scalar(k, "pg_clipfrac"),
                                 1e-12) < tol);
        CHECK(rlpo_test::rel_err(res.metrics["actor/ppo_kl"], ref.scalar(k, "ppo_kl"), 1e-12) <
              tol);
        CHECK(rlpo_test::rel_err(res.metrics["actor/kl_loss"], ref.scalar(k, "kl_loss"), 1e-12) <
              tol);
        if (r.logits)
            CHECK(rlpo_test::rel_err(res.metrics["actor/entropy"], ref.scalar(k, "entropy"),
                                     1e-12) < tol);
        if (r.values)
            CHECK(rlpo_test::rel_err(res.metrics["critic/vf_clipfrac"],
                                     ref.scalar(k, "vf_clipfrac"), 1e-12) < tol);
    }
}

TEMPLATE_TEST_CASE("training step: equals the sum of its parts, each called on its own",
                   "[rollout][step][properties]", float, double) {
    using S = TestType;
    const Data<S> d = make_data<S>(11);
    const Index B = d.logp.rows();
    for (Aggregation mode : rlpo_test::all_modes()) {
        INFO(rlpo::to_string(mode));
        const StepOptions o = full_options(mode);
        const TrainingStep<S> step(o);
        StepInputs<S> in;
        fill(in, d, 0, B, true, true);
        const auto r = step(in);

        const auto pg =
            rlpo::policy::ppo_clip(d.logp, d.old, d.adv, d.mask, o.policy.vanilla, o.norm);
        const auto kl = rlpo::penalties::kl_penalty(d.logp, d.ref, d.mask, *o.kl, o.norm);
        const auto ent = rlpo::regularizers::entropy_bonus(d.logits, d.mask, o.norm);
        const auto vf =
            rlpo::critic::value_loss(d.values, d.old_values, d.returns, d.mask, o.value, o.norm);
        const double tol = sizeof(S) == 4 ? 1e-5 : 1e-12;
        CHECK(rlpo_test::rel_err(r.pg_loss, pg.value) < tol);
        CHECK(rlpo_test::rel_err(r.kl_loss, o.kl_coef * kl.value) < tol);
        CHECK(rlpo_test::rel_err(r.entropy_loss, -o.entropy_coef * ent.value) < tol);
        CHECK(rlpo_test::rel_err(r.vf_loss, o.value_coef * vf.value) < tol);
        CHECK(rlpo_test::rel_err(r.loss, pg.value + o.kl_coef * kl.value -
                                             o.entropy_coef * ent.value + o.value_coef * vf.value) <
              tol);
        const Mat<S> g_lp = pg.grad + static_cast<S>(o.kl_coef) * kl.grad;
        CHECK(rlpo_test::max_rel_err(r.grad_logp, g_lp) < tol);
        CHECK(rlpo_test::max_rel_err(r.grad_logits,
                                     Mat<S>(static_cast<S>(-o.entropy_coef) * ent.grad)) < tol);
        CHECK(rlpo_test::max_rel_err(r.grad_values,
                                     Mat<S>(static_cast<S>(o.value_coef) * vf.grad)) < tol);
        // metrics: exactly the parts' metrics, under the step's names
        for (const char* name : {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"})
            CHECK(r.metrics["actor/" + std::string(name)] == pg.metrics[name]);
        CHECK(r.metrics["actor/kl_loss"] == kl.metrics["kl"]);
        CHECK(r.metrics["actor/entropy"] == ent.metrics["entropy"]);
        CHECK(r.metrics["critic/vf_clipfrac"] == vf.metrics["vf_clipfrac"]);
        CHECK(r.metrics["critic/vpred_mean"] == vf.metrics["vpred_mean"]);
        CHECK(r.metrics.size() ==
              pg.metrics.size() + kl.metrics.size() + ent.metrics.size() + vf.metrics.size());
    }
}

TEMPLATE_TEST_CASE("training step: micro-batches and data-parallel shards give the one-call totals",
                   "[rollout][step][properties]", float, double) {
    using S = TestType;
    const Data<S> d = make_data<S>(13, 10, 6);
    const Index B = d.logp.rows(), T = d.logp.cols();
    for (Aggregation mode : rlpo_test::all_modes()) {
        INFO(rlpo::to_string(mode));
        StepOptions o = full_options(mode);
        o.norm = rlpo::global_normalizer(d.mask, mode);
        const TrainingStep<S> step(o);
        StepInputs<S> in;
        fill(in, d, 0, B, true, true);
        const auto whole = step(in);
        // uneven micro-batches (1, 2, 3, 4 rows) split over two "ranks" (rows 0–2 and 3–9)
        rlpo::train::StepResult<S> rank[2];
        Mat<S> g_lp(B, T), g_z(B * T, d.V), g_v(B, T);
        bool first[2] = {true, true};
        for (const auto& ch : rlpo_test::uneven_chunks(B)) {
            const int k = ch.first < 3 ? 0 : 1;
            StepInputs<S> mb;
            fill(mb, d, ch.first, ch.second, true, true);
            // gradients written straight into the rows of the caller's full buffers
            rlpo::train::StepGradients<S> out{
                rlpo::write_to<S>(rlpo::MatRef<S>(g_lp.middleRows(ch.first, ch.second))),
                rlpo::write_to<S>(rlpo::MatRef<S>(g_z.middleRows(ch.first * T, ch.second * T))),
                rlpo::write_to<S>(rlpo::MatRef<S>(g_v.middleRows(ch.first, ch.second)))};
            const auto r = step(mb, out);
            if (first[k])
                rank[k] = r, first[k] = false;
            else
                rank[k].merge(r);
        }
        rank[0].merge(rank[1]);  // the all-reduce
        const double tol = sizeof(S) == 4 ? 2e-5 : 1e-12;
        CHECK(rlpo_test::rel_err(rank[0].loss, whole.loss) < tol);
        CHECK(rlpo_test::rel_err(rank[0].pg_loss, whole.pg_loss) < tol);
        CHECK(rlpo_test::rel_err(rank[0].vf_loss, whole.vf_loss) < tol);
        CHECK(rlpo_test::max_rel_err(g_lp, whole.grad_logp) < tol);
        CHECK(rlpo_test::max_rel_err(g_z, whole.grad_logits) < tol);
        CHECK(rlpo_test::max_rel_err(g_v, whole.grad_values) < tol);
        for (const auto& e : whole.metrics) {
            INFO(e.first);
            CHECK(rlpo_test::rel_err(rank[0].metrics[e.first], e.second.value(), 1e-12) < tol);
        }
    }
}

TEST_CASE("training step: options and placements", "[rollout][step][properties]") {
    const Data<double> d = make_data<double>(17);
    const Index B = d.logp.rows();
    SECTION("defaults: PPO clip alone; on-policy without old_logp gives −mean A") {
        const TrainingStep<double> step;
        StepInputs<double> in;
        in.logp = d.logp;
        in.mask = d.mask;
        in.advantages = d.adv;
        const auto r = step(in);
        const auto pg = rlpo::policy::ppo_clip(d.logp, d.logp, d.adv, d.mask);
        CHECK(r.loss == pg.value);
        CHECK(r.grad_logp.cwiseEqual(pg.grad).count() + (d.mask.array() == 0).count() >=
              d.mask.size());
        CHECK(r.grad_logits.size() == 0);
        CHECK(r.grad_values.size() == 0);
        CHECK(r.metrics["actor/ppo_kl"] == 0.0);
    }
    SECTION("KL in the reward: reported of old vs ref, no gradient, not in the loss") {
        StepOptions o;
        o.kl = rlpo::penalties::KLOptions::verl(rlpo::penalties::KLEstimator::K1);
        o.kl_placement = KLPlacement::Reward;
        StepInputs<double> in;
        fill(in, d, 0, B, false, false);
        const auto r = TrainingStep<double>(o)(in);
        const auto pg = rlpo::policy::ppo_clip(d.logp, d.old, d.adv, d.mask);
        CHECK(r.loss == pg.value);
        CHECK(r.kl_loss == 0.0);
        CHECK_FALSE(r.metrics.contains("actor/kl_loss"));
        const auto kl = rlpo::penalties::kl_penalty(d.old, d.ref, d.mask, *o.kl);
        CHECK(r.metrics["actor/reward_kl"] == kl.metrics["kl"]);
    }
    SECTION("add_to accumulates, no_grad skips, a write_to buffer is zeroed first") {
        const TrainingStep<double> step(full_options(Aggregation::TokenMean));
        StepInputs<double> in;
        fill(in, d, 0, B, true, true);
        const auto own = step(in);
        Mat<double> g = Mat<double>::Ones(B, d.logp.cols());
        step(in, {rlpo::add_to<double>(g, 2.0), rlpo::no_grad<double>(), rlpo::no_grad<double>()});
        CHECK(rlpo_test::max_rel_err(g, Mat<double>((Mat<double>::Ones(B, d.logp.cols()) +
                                                     2.0 * own.grad_logp))) < 1e-14);
        Mat<double> w = Mat<double>::Constant(B, d.logp.cols(), 7.0);
        const auto r =
            step(in, {rlpo::write_to<double>(w), rlpo::no_grad<double>(), rlpo::no_grad<double>()});
        CHECK(w == own.grad_logp);
        CHECK(r.grad_logp.size() == 0);
        CHECK(r.grad_logits.size() == 0);
        CHECK(r.loss == own.loss);
    }
    SECTION("a distillation hook adds its value and its logits gradient with its coefficient") {
        StepOptions o;
        o.distill_coef = 0.5;
        const rlpo::train::DistillHook<double> hook =
            [](const rlpo::ConstMatRef<double>& z, const rlpo::ConstMatRef<double>&,
               const rlpo::GradientOut<double>& g, const rlpo::Normalizer&, rlpo::Metrics& m) {
                // a toy term: Σ z over the first column, gradient 1 there
                for (Index r = 0; r < z.rows(); ++r)
                    g.data[r * g.stride] += static_cast<double>(g.coef);
                m.set("distill/toy", 1.0);
                return g.coef * (z.col(0).array().isNaN().select(0.0, z.col(0).array())).sum();
            };
        Mat<double> z = d.logits;
        for (Index k = 0; k < z.size(); ++k)
            if (std::isnan(z.data()[k])) z.data()[k] = 0;
        StepInputs<double> in;
        fill(in, d, 0, B, false, false);
        in.logits = z;
        const auto r = TrainingStep<double>(o, hook)(in);
        CHECK(r.distill_loss == Approx(0.5 * z.col(0).sum()));
        CHECK(r.grad_logits.col(0).isConstant(0.5));
        CHECK(r.metrics["distill/toy"] == 1.0);
    }
}

TEST_CASE("training step: bad input gives the documented error", "[rollout][step][bad-input]") {
    const Data<double> d = make_data<double>(19);
    const Index B = d.logp.rows();
    const auto full = full_options(Aggregation::TokenMean);
    {
        StepInputs<double> in;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>()(in),
                                        "train::TrainingStep(): logp: required");
        in.logp = d.logp;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>()(in), "mask: required (every term)");
        in.mask = d.mask;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>()(in),
                                        "advantages: required (the policy surrogate)");
        in.advantages = d.adv.leftCols(3);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            TrainingStep<double>()(in),
            "advantages: expected shape [6, 7] (same as logp), given [6, 3]");
        in.advantages = d.adv;
        in.old_logp = d.old.topRows(2);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>()(in), "old_logp: expected shape");
        in.old_logp = d.old;
        // a null write_to buffer of the right shape: its own message (it used to read
        // "expected a [6, 7] buffer, given [6, 7]")
        rlpo::GradientOut<double> null_out{rlpo::GradMode::Write, nullptr,       B,
                                           d.logp.cols(),         d.logp.cols(), 1.0};
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            TrainingStep<double>()(in,
                                   {null_out, rlpo::no_grad<double>(), rlpo::no_grad<double>()}),
            "StepGradients: null buffer for a [6, 7] gradient");
        null_out.rows = 5;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            TrainingStep<double>()(in,
                                   {null_out, rlpo::no_grad<double>(), rlpo::no_grad<double>()}),
            "StepGradients: expected a [6, 7] buffer, given [5, 7]");
    }
    {
        StepInputs<double> in;
        fill(in, d, 0, B, false, false);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in),
                                        "logits: required (entropy or distillation term)");
        in.logits = d.logits.topRows(4);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in),
                                        "logits: expected [B*T = 42, V > 0] rows");
        in.logits = d.logits;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in),
                                        "values: required (the value loss)");
        in.values = d.values;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in), "old_values: required");
        in.old_values = d.old_values;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in), "returns: required");
    }
    {
        StepInputs<double> in;
        in.logp = d.logp;
        in.mask = d.mask;
        in.advantages = d.adv;
        StepOptions o;
        o.kl = rlpo::penalties::KLOptions{};
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(o)(in),
                                        "ref_logp: required (the KL loss)");
    }
    StepOptions o;
    o.value.clip = 0.0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>{o}, "value.clip: must be > 0");
    o = {};
    o.kl_coef = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>{o}, "kl_coef: must be finite");
    o = {};
    o.entropy_coef = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>{o}, "entropy_coef: must be finite");
    o = {};
    o.policy.vanilla.clip_low = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>{o}, "clip_low: must be > 0");
    o = {};
    o.kl = rlpo::penalties::KLOptions{};
    o.kl->log_ratio_clamp = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>{o}, "log_ratio_clamp: must be > 0");
    {  // a term's own error surfaces with its message
        Data<double> bad = d;
        bad.adv(0, 1) = std::numeric_limits<double>::quiet_NaN();
        StepInputs<double> in;
        fill(in, bad, 0, B, true, true);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in),
                                        "advantages: NaN at [0, 1]");
        bad = d;
        bad.logits(2, 0) = std::numeric_limits<double>::quiet_NaN();  // token [0, 2], unmasked
        fill(in, bad, 0, B, true, true);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in),
                                        "regularizers::entropy_bonus(): logits: nan at [2, 0]");
        bad = d;
        bad.returns(0, 3) = std::numeric_limits<double>::quiet_NaN();
        fill(in, bad, 0, B, true, true);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(TrainingStep<double>(full)(in), "returns: NaN at [0, 3]");
    }
}

TEMPLATE_TEST_CASE("training step: inputs bound from a RolloutBatch equal the explicit inputs",
                   "[rollout][step][batch]", float, double) {
    using S = TestType;
    const Data<S> d = make_data<S>(23);
    const Index B = d.logp.rows();
    rlpo::rollout::RolloutBatch<S> batch;
    batch.groups = rlpo::rollout::Groups::equal(B, 2);
    batch.mask = d.mask;
    batch.rewards = Mat<S>::Zero(B, 1);
    batch.old_logp = d.old;
    batch.ref_logp = d.ref;
    batch.values = d.old_values;
    REQUIRE_NOTHROW(batch.validate());
    const TrainingStep<S> step(full_options(Aggregation::SeqMeanTokenSum));
    StepInputs<S> direct;
    fill(direct, d, 2, 3, true, true);
    const auto want = step(direct);
    StepInputs<S> bound;
    rlpo::train::bind_rollout(bound, batch, 2, 3);
    bound.logp = d.logp.middleRows(2, 3);
    bound.advantages = d.adv.middleRows(2, 3);
    bound.logits = d.logits.middleRows(2 * d.logp.cols(), 3 * d.logp.cols());
    bound.values = d.values.middleRows(2, 3);
    bound.returns = d.returns.middleRows(2, 3);
    const auto got = step(bound);
    CHECK(got.loss == want.loss);
    CHECK(got.grad_logp == want.grad_logp);
    CHECK(got.grad_values == want.grad_values);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::train::bind_rollout(bound, batch, 4, 3),
        "train::bind_rollout(): rows: [4, 7) is outside the batch's 6 responses");
}

namespace {
/// Bitwise equality of two gradients (−0 and +0 equal).
template <class S>
bool same_bits(const Mat<S>& a, const Mat<S>& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() && (a.array() == b.array()).all();
}

/// Two step results the same bit for bit: every loss part, ∂/∂logp, ∂/∂values and every
/// metric's (sum, count).
template <class S>
void check_same_result(const rlpo::train::StepResult<S>& a, const rlpo::train::StepResult<S>& b) {
    CHECK(a.loss == b.loss);
    CHECK(a.pg_loss == b.pg_loss);
    CHECK(a.kl_loss == b.kl_loss);
    CHECK(a.vf_loss == b.vf_loss);
    CHECK(same_bits(a.grad_logp, b.grad_logp));
    CHECK(same_bits(a.grad_values, b.grad_values));
    CHECK(a.metrics.size() == b.metrics.size());
    for (const auto& e : b.metrics) {
        INFO(e.first);
        CHECK(a.metrics.at(e.first).sum == e.second.sum);
        CHECK(a.metrics.at(e.first).count == e.second.count);
    }
}
}  // namespace

TEMPLATE_TEST_CASE(
    "training step: the single pass equals the parts one after the other, bit for bit",
    "[rollout][step][properties]", float, double) {
    using S = TestType;
    const Data<S> d = make_data<S>(23, 9, 37);
    const Index B = d.logp.rows(), T = d.logp.cols();
    // per-sequence advantages and their broadcast (0 at masked tokens)
    rt::Generator gen(5);
    const Mat<S> seq = gen.normal<S>(B, 1);
    const Mat<S> bcast = rlpo::rollout::broadcast_to_tokens(seq, d.mask);
    for (Aggregation mode : rlpo_test::all_modes()) {
        for (int variant = 0; variant < 5; ++variant) {
            INFO(rlpo::to_string(mode) << " variant " << variant);
            StepOptions o = full_options(mode);
            o.entropy_coef = 0.0;
            if (variant == 1) o.kl_placement = KLPlacement::Reward;
            if (variant == 2) o.kl.reset(), o.value.clip.reset();
            if (variant == 3)
                o.kl = rlpo::penalties::KLOptions::trl(rlpo::penalties::KLEstimator::K2);
            if (variant == 4) o.policy.vanilla = rlpo::policy::PPOClipOptions::intellect2();
            StepOptions parts_o = o;
            parts_o.fused = false;
            const TrainingStep<S> fused(o), parts(parts_o);
            REQUIRE(fused.fused());
            REQUIRE_FALSE(parts.fused());
            for (int adv_kind = 0; adv_kind < 2; ++adv_kind) {
                StepInputs<S> in;
                fill(in, d, 0, B, false, true);
                if (adv_kind == 1)
                    in.advantages = seq;
                else
                    in.advantages = bcast;
                const auto a = fused(in);
                StepInputs<S> in2;
                fill(in2, d, 0, B, false, true);
                in2.advantages = bcast;
                const auto b = parts(in2);
                check_same_result(a, b);
                // write_to and add_to destinations: the same bits as the parts'
                Mat<S> w1 = Mat<S>::Constant(B, T, S(3)), w2 = w1;
                Mat<S> v1 = Mat<S>::Constant(B, T, S(-2)), v2 = v1;
                fused(in,
                      {rlpo::add_to<S>(w1, 0.5), rlpo::no_grad<S>(), rlpo::write_to<S>(v1, 2.0)});
                parts(in2,
                      {rlpo::add_to<S>(w2, 0.5), rlpo::no_grad<S>(), rlpo::write_to<S>(v2, 2.0)});
                CHECK(same_bits(w1, w2));
                CHECK(same_bits(v1, v2));
                // masked entries: the added buffer untouched (3), the overwritten one 0
                for (Index k = 0; k < d.mask.size(); ++k)
                    if (d.mask.data()[k] == 0)
                        CHECK((w1.data()[k] == S(3) && v1.data()[k] == S(0)));
                fused(in, {rlpo::write_to<S>(w1, 1.5), rlpo::no_grad<S>(), rlpo::add_to<S>(v1)});
                parts(in2, {rlpo::write_to<S>(w2, 1.5), rlpo::no_grad<S>(), rlpo::add_to<S>(v2)});
                CHECK(same_bits(w1, w2));
                CHECK(same_bits(v1, v2));
            }
        }
    }
}

TEST_CASE("training step: the single pass streams large gradients, same bits as the parts",
          "[rollout][step][properties]") {
    // Gradients of 8 MiB and more are overwritten with streaming stores where a row starts on
    // a packet boundary: rows of 1024 floats (all aligned) and of 1001 (alignment varies by
    // row, so both stores meet in one call), into write_to buffers and the result's own.
    for (const Index T : {Index(1024), Index(1001)}) {
        INFO("T = " << T);
        const Index B = 2100;
        REQUIRE(static_cast<double>(B * T) * sizeof(float) >= 8.0 * 1024 * 1024);
        const Data<float> d = make_data<float>(41, B, T, 1);
        StepOptions o = full_options(Aggregation::TokenMean);
        o.entropy_coef = 0.0;
        StepOptions parts_o = o;
        parts_o.fused = false;
        const TrainingStep<float> fused(o), parts(parts_o);
        StepInputs<float> in;
        fill(in, d, 0, B, false, true);
        const auto a = fused(in), b = parts(in);
        CHECK(a.loss == b.loss);
        CHECK(same_bits(a.grad_logp, b.grad_logp));
        CHECK(same_bits(a.grad_values, b.grad_values));
        Mat<float> w1 = Mat<float>::Constant(B, T, 3.0f), w2 = w1;
        Mat<float> v1 = Mat<float>::Constant(B, T, -2.0f), v2 = v1;
        fused(in, {rlpo::write_to<float>(w1), rlpo::no_grad<float>(), rlpo::write_to<float>(v1)});
        parts(in, {rlpo::write_to<float>(w2), rlpo::no_grad<float>(), rlpo::write_to<float>(v2)});
        CHECK(same_bits(w1, w2));
        CHECK(same_bits(v1, v2));
        CHECK(same_bits(w1, a.grad_logp));
        // the rows' padded tails (never read) streamed as zeros over the buffers' 3 and −2
        Index masked = 0, wrong = 0;
        for (Index k = 0; k < d.mask.size(); ++k)
            if (d.mask.data()[k] == 0) {
                ++masked;
                wrong += w1.data()[k] != 0.0f || v1.data()[k] != 0.0f;
            }
        CHECK(masked > B * T / 4);
        CHECK(wrong == 0);
    }
}

TEST_CASE("training step: per-sequence advantages with the other surrogates; bad shapes",
          "[rollout][step][properties][bad-input]") {
    const Data<double> d = make_data<double>(29, 7, 9);
    const Index B = d.logp.rows();
    rt::Generator gen(3);
    const Mat<double> seq = gen.normal<double>(B, 1);
    const Mat<double> bcast = rlpo::rollout::broadcast_to_tokens(seq, d.mask);
    for (const char* name : {"cispo", "gspo", "sapo", "vanilla"}) {
        INFO(name);
        StepOptions o = full_options(Aggregation::SeqMeanTokenMean);
        o.entropy_coef = 0.0;
        o.policy = rlpo::policy::make_policy_loss(name);
        o.fused = false;  // the parts, on a broadcast copy
        const TrainingStep<double> step(o);
        StepInputs<double> a, b;
        fill(a, d, 0, B, false, true);
        fill(b, d, 0, B, false, true);
        a.advantages = seq;
        b.advantages = bcast;
        const auto ra = step(a), rb = step(b);
        CHECK(ra.loss == rb.loss);
        CHECK(same_bits(ra.grad_logp, rb.grad_logp));
        CHECK(same_bits(ra.grad_values, rb.grad_values));
    }
    for (bool fused : {true, false}) {
        StepOptions o = full_options(Aggregation::TokenMean);
        o.fused = fused;
        o.entropy_coef = 0.0;
        const TrainingStep<double> s(o);
        StepInputs<double> in;
        fill(in, d, 0, B, false, true);
        in.advantages = seq.topRows(B - 1);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            s(in), "train::TrainingStep(): advantages: expected [B, T] or [B, 1] with B = 7");
        in.advantages = Mat<double>::Zero(B, 2);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(s(in), "advantages: expected shape");
        // a NaN sequence advantage under the mask: the surrogate names it at the row's first
        // unmasked token, with or without the single pass
        Mat<double> bad = seq;
        bad(2, 0) = std::numeric_limits<double>::quiet_NaN();
        in.advantages = bad;
        Index t0 = 0;
        while (d.mask(2, t0) == 0) ++t0;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            s(in), "policy::ppo_clip(): advantages: NaN at [2, " + std::to_string(t0) + "]");
    }
}

namespace {
/// A critic rollout for GAE inside the step: `make_data` with a mask whose row 2 has a hole
/// (two response segments: the general recursion), row 4 empty, and rewards per token or
/// one outcome reward per row.
template <class S>
Data<S> gae_data(std::uint64_t seed, Index B, Index T) {
    Data<S> d = make_data<S>(seed, B, T);
    for (Index t = 0; t < T; ++t) d.mask(2, t) = t < T - 3 ? S(1) : S(0);
    for (Index t = 3; t < 6; ++t) d.mask(2, t) = S(0);
    d.mask.row(4).setZero();
    for (Index i = 0; i < B; ++i)  // the newly unmasked entries get finite inputs
        for (Index t = 0; t < T; ++t)
            if (d.mask(i, t) != 0 && std::isnan(d.logp(i, t)))
                d.logp(i, t) = S(-1.25), d.values(i, t) = S(0.5);
    return d;
}
}  // namespace

TEMPLATE_TEST_CASE("training step: GAE inside the pass equals gae_advantages then the step",
                   "[rollout][step][properties]", float, double) {
    // The reference is the composition: rollout::gae_advantages on the whole batch (its own
    // whitening), its [B, T] outputs handed to the step of the parts. The step with
    // StepInputs::gae forms each row in its pass; the plan fixes the whitening.
    using S = TestType;
    const Index B = 9, T = 37;
    const Data<S> d = gae_data<S>(31, B, T);
    rt::Generator gen(8);
    const Mat<S> outcome = gen.normal<S>(B, 1), token = gen.normal<S>(B, T);
    rlpo::rollout::GAEOptions g1;
    g1.lambda = 0.95;
    rlpo::rollout::GAEOptions g2 = rlpo::rollout::GAEOptions::ppo_paper();
    g2.whiten = false;
    for (const auto& g : {g1, g2, rlpo::rollout::GAEOptions::openrlhf()}) {
        for (int rk = 0; rk < 2; ++rk) {
            const Mat<S>& rewards = rk == 0 ? outcome : token;
            INFO("lambda " << g.lambda << " whiten " << g.whiten << " rewards " << rewards.cols());
            const auto ta = rlpo::rollout::gae_advantages(rewards, d.old_values, d.mask, g);
            const rlpo::rollout::GAEPlan plan =
                rlpo::rollout::gae_plan(rewards, d.old_values, d.mask, g);
            // the plan's advantages of the whole batch and of pieces: the same rows
            rlpo::rollout::TokenAdvantages<S> tp;
            rlpo::rollout::gae_advantages(plan, rewards, d.old_values, d.mask, tp);
            CHECK(same_bits(tp.advantages, ta.advantages));
            CHECK(same_bits(tp.returns, ta.returns));
            for (const auto& ch : rlpo_test::uneven_chunks(B)) {
                rlpo::rollout::TokenAdvantages<S> piece;
                rlpo::rollout::gae_advantages(plan, rewards.middleRows(ch.first, ch.second),
                                              d.old_values.middleRows(ch.first, ch.second),
                                              d.mask.middleRows(ch.first, ch.second), piece);
                CHECK(same_bits(piece.advantages,
                                Mat<S>(ta.advantages.middleRows(ch.first, ch.second))));
                CHECK(same_bits(piece.returns, Mat<S>(ta.returns.middleRows(ch.first, ch.second))));
            }
            for (Aggregation mode : {Aggregation::TokenMean, Aggregation::SeqMeanTokenMean}) {
                StepOptions o = full_options(mode);
                o.entropy_coef = 0.0;
                StepOptions parts_o = o;
                parts_o.fused = false;
                const TrainingStep<S> fused(o), parts(parts_o);
                StepInputs<S> ref;
                fill(ref, d, 0, B, false, true);
                ref.advantages = ta.advantages;
                ref.returns = ta.returns;
                const auto want = parts(ref);
                for (int k : {0, 1, 2, 3}) {  // fused with 1, 2, 3 threads; the parts
                    INFO(rlpo::to_string(mode) << " run " << k);
                    StepInputs<S> gin;
                    fill_gae(gin, d, 0, B, rewards, plan);
                    const auto got = k == 0
                                         ? parts(gin)
                                         : rlpo_test::with_threads(k, [&] { return fused(gin); });
                    check_same_result(got, want);
                }
            }
        }
    }
}

TEST_CASE("training step: GAE inside the pass over micro-batches; its bad input",
          "[rollout][step][properties][bad-input]") {
    const Index B = 10, T = 23;
    const Data<double> d = gae_data<double>(37, B, T);
    rt::Generator gen(9);
    const Mat<double> outcome = gen.normal<double>(B, 1);
    rlpo::rollout::GAEOptions g;
    g.lambda = 0.9;
    const rlpo::rollout::GAEPlan plan = rlpo::rollout::gae_plan(outcome, d.old_values, d.mask, g);
    const auto bind = [&](StepInputs<double>& in, Index r0, Index n) {
        fill_gae(in, d, r0, n, outcome, plan);
    };
    StepOptions o = full_options(Aggregation::TokenMean);
    o.entropy_coef = 0.0;
    o.norm = rlpo::global_normalizer(d.mask, o.norm.mode);
    const TrainingStep<double> step(o);
    StepInputs<double> all;
    bind(all, 0, B);
    const auto whole = step(all);
    // micro-batches with the whole batch's plan: their gradients are the whole step's rows
    Mat<double> g_lp(B, T), g_v(B, T);
    double loss = 0.0;
    for (const auto& ch : rlpo_test::uneven_chunks(B)) {
        StepInputs<double> mb;
        bind(mb, ch.first, ch.second);
        loss +=
            step(
                mb,
                {rlpo::write_to<double>(rlpo::MatRef<double>(g_lp.middleRows(ch.first, ch.second))),
                 rlpo::no_grad<double>(),
                 rlpo::write_to<double>(rlpo::MatRef<double>(g_v.middleRows(ch.first, ch.second)))})
                .loss;
    }
    CHECK(rlpo_test::rel_err(loss, whole.loss) < 1e-12);
    CHECK(same_bits(g_lp, whole.grad_logp));
    CHECK(same_bits(g_v, whole.grad_values));

    // bad input: the errors gae_advantages gives, on the fused and the composed path
    for (bool fused : {true, false}) {
        StepOptions fo = o;
        fo.fused = fused;
        const TrainingStep<double> s(fo);
        INFO("fused " << fused);
        StepInputs<double> in;
        bind(in, 0, B);
        in.advantages = d.adv;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            s(in), "train::TrainingStep(): advantages, returns: formed in the step with gae");
        StepInputs<double> no_gae;
        fill(no_gae, d, 0, B, false, true);
        no_gae.rewards = outcome;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(s(no_gae),
                                        "train::TrainingStep(): rewards: read only with gae");
        StepInputs<double> no_r;
        bind(no_r, 0, B);
        no_r.rewards = Mat<double>(B - 1, 1);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            s(no_r), "rollout::gae_advantages(): token_rewards: expected [B, T] or [B, 1]");
        Mat<double> bad_r = outcome;
        bad_r(3, 0) = std::numeric_limits<double>::quiet_NaN();
        StepInputs<double> nan_r;
        bind(nan_r, 0, B);
        nan_r.rewards = bad_r;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            s(nan_r), "rollout::gae_advantages(): token_rewards: non-finite value nan at [3, 0]");
        Mat<double> bad_v = d.old_values;
        bad_v(5, 1) = std::numeric_limits<double>::infinity();
        REQUIRE(d.mask(5, 1) != 0);
        StepInputs<double> inf_v;
        bind(inf_v, 0, B);
        inf_v.old_values = bad_v;
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(
            s(inf_v), "rollout::gae_advantages(): values: non-finite value inf at [5, 1]");
        StepInputs<double> no_ov;
        bind(no_ov, 0, B);
        no_ov.old_values = Mat<double>(B, T - 1);
        RLPO_REQUIRE_THROWS_WITH_SUBSTR(s(no_ov),
                                        "train::TrainingStep(): old_values: expected shape");
    }
    StepInputs<double> fresh;
    fresh.logp = d.logp;
    fresh.mask = d.mask;
    fresh.values = d.values;
    fresh.old_values = d.old_values;
    fresh.gae = &plan;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(step(fresh), "train::TrainingStep(): rewards: required (gae)");
    Mat<double> bad_r = outcome;
    bad_r(3, 0) = std::numeric_limits<double>::quiet_NaN();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(
        rlpo::rollout::gae_plan(bad_r, d.old_values, d.mask, g),
        "rollout::gae_plan(): token_rewards: non-finite value nan at [3, 0]");
    // a reward of a row without unmasked tokens is never read
    REQUIRE(d.mask.row(4).sum() == 0);
    bad_r = outcome;
    bad_r(4, 0) = std::numeric_limits<double>::quiet_NaN();
    CHECK(rlpo::rollout::gae_plan(bad_r, d.old_values, d.mask, g).whitening.k == plan.whitening.k);
}
