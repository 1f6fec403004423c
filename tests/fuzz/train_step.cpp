// Fuzz target: the training step (train/step.hpp) and the step from logits
// (train/from_logits.hpp): a surrogate by name, KL in the loss or the reward (every
// estimator), entropy, the clipped value loss and a distillation hook, under one normalizer,
// with the inputs each term needs (or not, which must throw); the advantages given, or formed
// in the step by GAE from a plan of the batch (StepInputs::gae).
#include <rlpo/distill/divergences.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/train/from_logits.hpp>
#include <rlpo/train/step.hpp>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

namespace rt = rlpo::train;
using rlpo::Index;
using rlpo::Mat;

template <class S>
void one(FuzzedDataProvider& f) {
    const Index B = f.ConsumeIntegralInRange<Index>(0, 6);
    const Index T = f.ConsumeIntegralInRange<Index>(0, 12);
    const Index V = f.ConsumeIntegralInRange<Index>(0, 40);
    const bool from_logits = f.ConsumeBool();
    const bool gae = f.ConsumeIntegralInRange<int>(0, 3) == 3;  // GAE inside the step
    rt::StepOptions o;
    const char* name = fz::pick_name(f, rlpo::policy::detail::policy_loss_table());
    o.policy = rlpo::policy::make_policy_loss(name);
    const char* kl_name = "none";
    if (f.ConsumeBool()) {
        kl_name = fz::pick_name(f, rlpo::penalties::detail::kl_estimator_table);
        o.kl = rlpo::penalties::KLOptions::verl(rlpo::penalties::parse_kl_estimator(kl_name));
        o.kl_coef = fz::pick(f, {0.001, 0.0, 1.0, 1e30, -1.0});
        o.kl_placement = f.ConsumeBool() ? rt::KLPlacement::Loss : rt::KLPlacement::Reward;
    }
    if (f.ConsumeBool()) o.entropy_coef = fz::pick(f, {0.01, 1.0, -1.0, 1e30, 1e-300});
    if (f.ConsumeBool()) {
        o.value_coef = fz::pick(f, {0.5, 1.0, 1e30, 1e-300});
        if (f.ConsumeBool())
            o.value.clip = std::nullopt;
        else
            o.value.clip = fz::pick(f, {0.5, 0.2, 1e-8, 1e30});
    }
    const bool hook = f.ConsumeIntegralInRange<int>(0, 3) == 0;
    o.distill_coef = fz::pick(f, {1.0, 0.5, 0.0, 1e30});
    o.norm = fz::normalizer(f);
    const double temperature = fz::pick(f, {1.0, 0.7, 1e-3, 100.0});
    fz::trace() << "step<" << (sizeof(S) == 4 ? "float" : "double") << "> B " << B << " T " << T
                << " V " << V << " from_logits " << from_logits << " loss " << name << " kl "
                << kl_name << " beta " << o.kl_coef << " placement "
                << static_cast<int>(o.kl_placement) << " c_H " << o.entropy_coef << " c_V "
                << o.value_coef << " clip " << o.value.clip.value_or(-1) << " hook " << hook
                << " distill_coef " << o.distill_coef << " temperature " << temperature << '\n';
    Mat<S> m = fz::mask<S>(f, B, T);
    Mat<S> lp = fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> old = f.ConsumeBool() ? lp : fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> ref = fz::matrix<S>(f, B, T, fz::Dom::LogProb);
    Mat<S> adv = fz::matrix<S>(f, B, T, fz::Dom::Real);
    Mat<S> val = fz::matrix<S>(f, B, T, fz::Dom::Real);
    Mat<S> oval = fz::matrix<S>(f, B, T, fz::Dom::Real);
    Mat<S> ret = fz::matrix<S>(f, B, T, fz::Dom::Real);
    Mat<S> z = fz::matrix<S>(f, B * T, V, fz::Dom::Logit);
    Mat<S> teacher = fz::matrix<S>(f, B * T, V, fz::Dom::Logit);
    Mat<std::int64_t> labels(B, T);
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t)
            labels(i, t) = V > 0 ? f.ConsumeIntegralInRange<std::int64_t>(0, V - 1) : 0;
    const bool ignore_masked = f.ConsumeBool();
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t)
            if (ignore_masked && m(i, t) == 0) labels(i, t) = -100;
    // which optional inputs are given
    const bool give_old = f.ConsumeIntegralInRange<int>(0, 3) != 0;
    const bool give_ref = f.ConsumeIntegralInRange<int>(0, 3) != 0;
    const bool give_logits = from_logits || f.ConsumeIntegralInRange<int>(0, 3) != 0;
    const bool give_values = f.ConsumeIntegralInRange<int>(0, 3) != 0;
    fz::poison_tokens(f, lp, m, !from_logits, "logp");
    fz::poison_tokens(f, old, m, give_old && o.policy.loss != rlpo::policy::PolicyLoss::GPG,
                      "old_logp");
    fz::poison_tokens(f, adv, m, !gae, "advantages");  // not read with GAE
    fz::poison_tokens(f, ref, m, false, "ref_logp");
    fz::poison_tokens(f, val, m, false, "values");
    fz::poison_rows(f, z, m, false, "logits");
    fz::dump("mask", m);
    fz::dump("logp", lp);
    fz::dump("old_logp", old);
    fz::dump("ref_logp", ref);
    fz::dump("advantages", adv);
    fz::dump("values", val);
    fz::dump("old_values", oval);
    fz::dump("returns", ret);
    fz::dump("logits", z);
    fz::dump("labels", labels);
    if (fz::known::train_step(o, from_logits, V, m)) return;

    rt::DistillHook<S> h;
    if (hook)
        h = [&](const rlpo::ConstMatRef<S>& logits, const rlpo::ConstMatRef<S>& mask,
                const rlpo::GradientOut<S>& g, const rlpo::Normalizer& norm, rlpo::Metrics& mt) {
            const auto r = rlpo::distill::divergence(logits, teacher, mask, {}, norm, g);
            mt.merge(r.metrics);
            return r.value;
        };
    // GAE inside the step: a plan of the batch from rewards, the old values and the mask
    const rlpo::rollout::GAEOptions go =
        f.ConsumeBool() ? rlpo::rollout::GAEOptions::openrlhf() : rlpo::rollout::GAEOptions::verl();
    const Mat<S> rew = fz::matrix<S>(f, B, f.ConsumeBool() ? 1 : T, fz::Dom::Real);
    rlpo::rollout::GAEPlan plan;
    if (gae) {
        fz::trace() << "gae: lambda " << go.lambda << " rewards [" << rew.rows() << ", "
                    << rew.cols() << "]\n";
        fz::dump("rewards", rew);
        bool planned = false;
        const fz::Flags poisoned = fz::flags();
        fz::flags() = fz::Flags{};  // the plan reads none of the poisoned inputs
        fz::run("gae_plan", [&] {
            plan = rlpo::rollout::gae_plan(rew, oval, m, go);
            planned = true;
        });
        fz::flags() = poisoned;
        if (!planned) return;
    }
    rt::StepInputs<S> in;
    if (!from_logits) in.logp = lp;
    in.mask = m;
    if (gae) {
        in.gae = &plan;
        in.rewards = rew;
        in.old_values = oval;
    } else {
        in.advantages = adv;
    }
    if (give_old) in.old_logp = old;
    if (give_ref) in.ref_logp = ref;
    if (give_logits) in.logits = z;
    if (give_values) {
        in.values = val;
        in.old_values = oval;
        if (!gae) in.returns = ret;
    }
    const auto masked = [&](Index i, Index t) { return m(i, t) == 0; };
    const auto masked_row = [&](Index n, Index) { return T == 0 || m(n / T, n % T) == 0; };
    const char* fn = from_logits ? "step_from_logits" : "TrainingStep";
    fz::run(fn, [&] {
        const rt::TrainingStep<S> step(o, h);
        rt::StepResult<S> r;
        if (from_logits)
            r = rt::step_from_logits(step, in, labels, temperature);
        else
            r = step(in);
        fz::check_value(fn, "loss", r.loss);
        fz::check_value(fn, "pg_loss", r.pg_loss);
        fz::check_value(fn, "kl_loss", r.kl_loss);
        fz::check_value(fn, "entropy_loss", r.entropy_loss);
        fz::check_value(fn, "vf_loss", r.vf_loss);
        fz::check_value(fn, "distill_loss", r.distill_loss);
        fz::check_metrics(fn, r.metrics);
        fz::Sink<S> own;
        fz::check_grad(fn, r.grad_logp, B, T, "grad_logp");
        fz::check_masked(fn, own, r.grad_logp, masked, "grad_logp");
        if (r.grad_logits.size() > 0 || from_logits) {
            fz::check_grad(fn, r.grad_logits, B * T, V, "grad_logits");
            fz::check_masked(fn, own, r.grad_logits, masked_row, "grad_logits");
        }
        if (r.grad_values.size() > 0) {
            fz::check_grad(fn, r.grad_values, B, T, "grad_values");
            fz::check_masked(fn, own, r.grad_values, masked, "grad_values");
        }
    });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider f(data, size);
    fz::begin_case();
    if (f.ConsumeBool())
        one<float>(f);
    else
        one<double>(f);
    return 0;
}
