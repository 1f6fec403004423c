#pragma once
/// \file
/// The training step: every term of an RL post-training loss in one call, composed into one
/// gradient buffer per differentiable input, under one normalizer.
///
///     loss = pg_loss                                      (policy surrogate, ∂/∂logp)
///          + β · kl_loss               if KL is placed in the loss (∂/∂logp)
///          − c_H · entropy             if c_H ≠ 0           (∂/∂logits)
///          + c_V · vf_loss             if c_V ≠ 0           (∂/∂values)
///          + distillation hook value   if a hook is given   (∂/∂logits, the hook's own)
///
/// where every token term is aggregated by the same `Normalizer` (core/aggregation.hpp) and
/// each term is the library's own objective, called once with a `GradientOut` that adds into
/// the step's buffer (so the step's value and gradients are exactly the sum of its parts):
///   * pg_loss — `policy::policy_loss(StepOptions::policy, …)` (PPO clip by default; GSPO,
///     CISPO, GPG, SAPO, … by `policy::make_policy_loss(name)`), on (logp, old_logp, A);
///   * kl_loss — `penalties::kl_penalty` of logp against ref_logp (k3 etc.). Placed in the
///     *reward* instead (`KLPlacement::Reward`, classic PPO / verl `use_kl_in_reward`), it is not
///     part of the loss: the rollout side subtracts β·kl(old_logp, ref_logp) from the token
///     rewards before the advantages (rollout/shaping.hpp), and the step only reports it;
///   * entropy — `regularizers::entropy_bonus` over the logits rows, with coefficient −c_H;
///   * vf_loss — `critic::value_loss` (verl's clipped ½·max((v−R)², (clip(v, v_old±ε_v)−R)²)),
///     gradient w.r.t. the values, coefficient c_V;
///   * the distillation hook — a callable given the logits, the mask, a `GradientOut` adding
///     into the step's logits gradient (coefficient `distill_coef`), the normalizer and the
///     metrics to extend; it returns its value already scaled by that coefficient (as every
///     rlpo objective does), e.g. a `distill::` divergence against a teacher's logits.
///
/// **Gradients** (one buffer per input, each term adds into it with `rlpo::add_to`):
/// `grad_logp` [B, T], `grad_logits` [B·T, V] (row i·T + t is token (i, t); only when entropy or
/// distillation is on), `grad_values` [B, T] (only when the value loss is on). The trainer
/// back-propagates `grad_logp` through its log-softmax-gather and adds `grad_logits` at the
/// logits. All are exactly 0 where the mask is 0, and masked inputs are never read.
///
/// **Micro-batches and data-parallel shards**: give the normalizer the global counts of the
/// whole mini-batch (`global_normalizer(mask, mode)` computes them; across ranks, all-reduce
/// them); then the values and gradients of the pieces add up exactly to one call on the whole
/// batch, and `StepResult::merge` combines the pieces' results (values add, metrics merge as
/// (sum, count) pairs).
///
/// **Advantages** per token (`[B, T]`) or per sequence (`[B, 1]`, e.g. `grpo_advantages`'s
/// output, read once per row: no `[B, T]` broadcast is made on the fused path; the other
/// surrogates get a broadcast copy, 0 at masked tokens, as `rollout::broadcast_to_tokens`).
///
/// **GAE in the pass** (`StepInputs::gae`, PPO with a critic): instead of `[B, T]` advantages
/// and returns, give the rewards (`[B, 1]` outcome or `[B, T]` token rewards), the rollout's
/// values as `old_values` and a `rollout::gae_plan` of the whole mini-batch (its whitening
/// statistics, over all ranks); each row's advantages and returns are then formed where the
/// pass uses them, bit-equal to handing the step `rollout::gae_advantages(plan, …)`'s outputs
/// and without their two `[B, T]` matrices. Micro-batches share the mini-batch's plan.
///
/// **One pass** (`StepOptions::fused`, default on, with the PPO clip surrogate): the
/// surrogate, the KL (in the loss, or its reward-placement metric) and the value loss are
/// evaluated together per SIMD packet (train/detail/fused.hpp), so each `[B, T]` input is read
/// once and `grad_logp` / `grad_values` are written once, without zeroing them first. The
/// result is bit-for-bit that of the parts called one after the other (tested); the entropy
/// and distillation terms read the logits in their own pass. When a part would throw, the
/// step reruns the parts, so the error is the part's own. On an error the contents of the
/// gradient buffers are unspecified.
///
/// **Metrics** (verl names): the surrogate's metrics under `actor/` (`actor/pg_clipfrac`,
/// `actor/pg_clipfrac_lower`, `actor/ppo_kl` for PPO clip), `actor/kl_loss` (token-mean KL
/// estimate, loss placement) or `actor/reward_kl` (reward placement, of old_logp against
/// ref_logp, reported when ref_logp is given), `actor/entropy`, `critic/vf_clipfrac`,
/// `critic/vpred_mean`, and whatever the hook adds; the loss parts are fields of `StepResult`.
///
/// **Defaults**: PPO clip with its paper defaults, no KL (β = 0.001 when enabled, verl's
/// `kl_loss_coef`), no entropy, no value loss, token-mean — verl's actor defaults with
/// `use_kl_loss=False`, `entropy_coeff=0`; value clip ε_v = 0.5 (verl `critic.cliprange_value`).
///
/// **Bad input** (rlpo::invalid_argument, "rlpo::train::TrainingStep(): …"): a missing input
/// a term needs (`ref_logp` for the KL loss, `logits` for entropy / distillation, `values`,
/// `old_values`, `returns` for the value loss), shapes differing from `logp` (logits: B·T rows),
/// a non-finite coefficient, ε_v ≤ 0, invalid PPO / KL options (checked when the step is
/// built), and each term's own errors (NaN inputs under the mask, other surrogates' options)
/// with that term's message.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/critic/value_loss.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/policy_loss.hpp>
#include <rlpo/regularizers/entropy.hpp>
#include <rlpo/rollout/batch.hpp>
#include <rlpo/rollout/returns.hpp>
#include <rlpo/train/detail/fused.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace rlpo::train {

/// An optional read-only `[rows, cols]` input of the step. Assign any Eigen matrix expression;
/// a row-major matrix, `Map` or row block (a micro-batch) is read in place.
template <class S>
class StepInput {
public:
    StepInput() = default;
    StepInput(const StepInput&) = delete;  // a Ref may own a converted copy: never copy it
    StepInput& operator=(const StepInput&) = delete;
    template <class D>
    StepInput& operator=(const Eigen::MatrixBase<D>& x) {
        ref_ = std::make_unique<ConstMatRef<S>>(x.derived());
        return *this;
    }
    bool present() const { return ref_ != nullptr; }
    const ConstMatRef<S>& operator*() const { return *ref_; }
    Index rows() const { return ref_ ? ref_->rows() : 0; }
    Index cols() const { return ref_ ? ref_->cols() : 0; }

private:
    std::unique_ptr<ConstMatRef<S>> ref_;  // a Ref may own a converted copy: keep it put
};

/// What the step reads for one (micro-)batch. `logp`, `mask` and `advantages` are required;
/// `old_logp` absent means on-policy (old = logp, every ratio 1).
template <class S>
struct StepInputs {
    StepInput<S> logp;        ///< [B, T] current log-probs of the sampled tokens
    StepInput<S> mask;        ///< [B, T] response mask
    StepInput<S> advantages;  ///< [B, T] per token, or [B, 1] per sequence (read per row)
    StepInput<S> old_logp;    ///< [B, T] behaviour log-probs (absent: on-policy)
    StepInput<S> ref_logp;    ///< [B, T] reference log-probs (KL)
    StepInput<S> logits;      ///< [B·T, V] logits (entropy, distillation)
    StepInput<S> values;      ///< [B, T] current critic values (value loss)
    StepInput<S> old_values;  ///< [B, T] values at rollout time (value clip)
    StepInput<S> returns;     ///< [B, T] value targets
    /// GAE inside the step (instead of `advantages` and `returns`, which must then be absent):
    /// each row's advantages and returns are formed in the pass that uses them, from `rewards`
    /// and `old_values` (the values at rollout time) with the whole batch's plan
    /// (`rollout::gae_plan`: options and whitening) — bit-equal to passing the
    /// `rollout::gae_advantages(*gae, rewards, old_values, mask)` outputs, without their
    /// `[B, T]` matrices. Not owned.
    const rollout::GAEPlan* gae = nullptr;
    StepInput<S> rewards;  ///< [B, T] token rewards or [B, 1] outcome rewards (with `gae`)
};

/// Bind the rollout's fields of rows [row0, row0 + rows) to a step's inputs (read in place):
/// `mask`, and where the batch has them `old_logp`, `ref_logp` and `old_values` (= the rollout's
/// `values`). The trainer still sets `logp` (and `logits` / `values` / `returns`) from its
/// forward pass and `advantages` from an estimator run over the whole batch (or `rewards` and
/// `gae`, a `rollout::gae_plan` of the whole batch: GAE formed in the step's pass).
template <class S>
inline void bind_rollout(StepInputs<S>& in, const rollout::RolloutBatch<S>& b, Index row0,
                         Index rows) {
    constexpr const char* fn = "train::bind_rollout";
    RLPO_CHECK(row0 >= 0 && rows >= 0 && row0 + rows <= b.mask.rows(), fn, "rows: [", row0, ", ",
               row0 + rows, ") is outside the batch's ", b.mask.rows(), " responses");
    in.mask = b.mask.middleRows(row0, rows);
    if (b.old_logp.rows() > 0) in.old_logp = b.old_logp.middleRows(row0, rows);
    if (b.ref_logp.rows() > 0) in.ref_logp = b.ref_logp.middleRows(row0, rows);
    if (b.values.rows() > 0) in.old_values = b.values.middleRows(row0, rows);
}

/// Where the KL penalty goes.
enum class KLPlacement {
    Loss,   ///< β · kl(logp, ref_logp) added to the loss (GRPO, verl use_kl_loss)
    Reward  ///< subtracted from the token rewards on the rollout side (PPO, verl use_kl_in_reward)
};

/// A distillation term: called with the logits [B·T, V], the mask [B, T], a GradientOut adding
/// into the step's logits gradient (coefficient included) and the metrics to extend; returns
/// its (scaled) value.
template <class S>
using DistillHook =
    std::function<double(const ConstMatRef<S>& logits, const ConstMatRef<S>& mask,
                         const GradientOut<S>& grad_logits, const Normalizer& norm, Metrics& m)>;

struct StepOptions {
    /// The surrogate and its options (policy/policy_loss.hpp; default PPO clip, paper defaults).
    /// `policy::make_policy_loss("gspo")` etc. give the verl / TRL presets.
    policy::PolicyLossOptions policy{};

    /// KL penalty: unset = none.
    std::optional<penalties::KLOptions> kl{};
    double kl_coef = 0.001;  ///< β (verl kl_loss_coef default 0.001)
    KLPlacement kl_placement = KLPlacement::Loss;

    double entropy_coef = 0.0;  ///< c_H (verl entropy_coeff; 0 = off)

    double value_coef = 0.0;           ///< c_V (0 = no value loss)
    critic::ValueLossOptions value{};  ///< value clip ε_v (verl critic.cliprange_value 0.5)

    double distill_coef = 1.0;  ///< coefficient handed to the distillation hook

    Normalizer norm{};  ///< one normalizer for every token term

    /// With the PPO clip surrogate, evaluate the surrogate, the KL and the value loss in one
    /// pass over the token inputs (bit-equal to one pass per term; false: one pass per term).
    bool fused = true;

    /// The data-parallel group (dist/reductions.hpp) of a sharded mini-batch, or null (one
    /// process). The step uses it where a term's result depends on other ranks' rows: the
    /// KL-Cov and Clip-Cov token selections (exact over all ranks). The normaliser's global
    /// counts are the caller's (`dist::with_global_counts` over the whole mini-batch's mask:
    /// a micro-batch's own mask would give the wrong counts), and `dist::reduce` merges the
    /// ranks' results. Not owned; it must outlive the calls.
    const dist::Reductions* reductions = nullptr;
};

/// The step's output: total loss, its parts, gradients and metrics.
template <class S>
struct StepResult {
    double loss = 0.0;
    double pg_loss = 0.0;
    double kl_loss = 0.0;       ///< β-scaled (0 unless KLPlacement::Loss)
    double entropy_loss = 0.0;  ///< −c_H · aggregated entropy (what enters the loss)
    double vf_loss = 0.0;       ///< c_V-scaled
    double distill_loss = 0.0;
    Mat<S> grad_logp;    ///< [B, T]
    Mat<S> grad_logits;  ///< [B·T, V] (empty unless entropy / distillation)
    Mat<S> grad_values;  ///< [B, T] (empty unless the value loss)
    Metrics metrics;

    /// Combine the result of another micro-batch / shard of the same mini-batch: values add,
    /// metrics merge. (Gradients belong to different rows and are not touched.)
    StepResult& merge(const StepResult& o) {
        loss += o.loss;
        pg_loss += o.pg_loss;
        kl_loss += o.kl_loss;
        entropy_loss += o.entropy_loss;
        vf_loss += o.vf_loss;
        distill_loss += o.distill_loss;
        metrics.merge(o.metrics);
        return *this;
    }
};

namespace detail {

inline void validate(const char* fn, const StepOptions& o) {
    ::rlpo::detail::check_finite_param(fn, "kl_coef", o.kl_coef);
    ::rlpo::detail::check_finite_param(fn, "entropy_coef", o.entropy_coef);
    ::rlpo::detail::check_finite_param(fn, "value_coef", o.value_coef);
    ::rlpo::detail::check_finite_param(fn, "distill_coef", o.distill_coef);
    if (o.value.clip) ::rlpo::detail::check_positive(fn, "value.clip", *o.value.clip);
}

template <class S>
inline void require(const char* fn, const StepInput<S>& x, const char* name, const char* why,
                    const ConstMatRef<S>& like) {
    RLPO_CHECK(x.present(), fn, name, ": required (", why, ")");
    ::rlpo::detail::check_same_shape(fn, name, *x, "logp", like);
}

}  // namespace detail

/// Where the step's gradients go (default: allocated in the result). A `write_to` buffer is
/// zeroed then accumulated into; an `add_to` buffer is accumulated into; `no_grad` skips.
template <class S>
struct StepGradients {
    GradientOut<S> logp{};
    GradientOut<S> logits{};
    GradientOut<S> values{};
};

/// The training step: configure once, call once per (micro-)batch.
template <class S>
class TrainingStep {
public:
    static_assert(::rlpo::detail::is_supported_scalar_v<S>,
                  "rlpo: the step runs in float or double");

    TrainingStep() = default;
    explicit TrainingStep(StepOptions opts, DistillHook<S> distill = {})
        : opts_(opts), distill_(std::move(distill)) {
        detail::validate(kFn, opts_);
        if (opts_.kl) penalties::detail::validate(kFn, *opts_.kl);
        if (opts_.policy.loss == policy::PolicyLoss::Vanilla)
            policy::detail::validate(kFn, opts_.policy.vanilla);
    }

    const StepOptions& options() const { return opts_; }
    bool uses_logits() const { return opts_.entropy_coef != 0.0 || static_cast<bool>(distill_); }
    bool uses_values() const { return opts_.value_coef != 0.0; }

    /// Total loss, gradients and metrics of one (micro-)batch.
    StepResult<S> operator()(const StepInputs<S>& in, const StepGradients<S>& out = {}) const {
        constexpr const char* fn = kFn;
        RLPO_CHECK(in.logp.present(), fn, "logp: required");
        const ConstMatRef<S>& lp = *in.logp;
        const Index B = lp.rows(), T = lp.cols();
        detail::require(fn, in.mask, "mask", "every term", lp);
        const bool gae = in.gae != nullptr;
        if (gae) {
            RLPO_CHECK(!in.advantages.present() && !in.returns.present(), fn,
                       "advantages, returns: formed in the step with gae (give neither)");
            RLPO_CHECK(in.rewards.present(), fn, "rewards: required (gae)");
            detail::require(fn, in.old_values, "old_values", "gae", lp);
            (void)rollout::detail::gae_check<S>("rollout::gae_advantages", *in.rewards,
                                                *in.old_values, *in.mask, in.gae->options, false);
        } else {
            RLPO_CHECK(in.advantages.present(), fn, "advantages: required (the policy surrogate)");
            RLPO_CHECK(!in.rewards.present(), fn, "rewards: read only with gae (StepInputs::gae)");
        }
        const bool seq_adv = !gae && in.advantages.cols() == 1 && T != 1;
        if (seq_adv)
            RLPO_CHECK(in.advantages.rows() == B, fn,
                       "advantages: expected [B, T] or [B, 1] with B = ", B, ", given [",
                       in.advantages.rows(), ", 1]");
        else if (!gae)
            detail::require(fn, in.advantages, "advantages", "the policy surrogate", lp);
        const bool kl_loss = opts_.kl && opts_.kl_placement == KLPlacement::Loss;
        if (kl_loss) detail::require(fn, in.ref_logp, "ref_logp", "the KL loss", lp);
        if (in.old_logp.present())
            ::rlpo::detail::check_same_shape(fn, "old_logp", *in.old_logp, "logp", lp);
        if (uses_logits()) {
            RLPO_CHECK(in.logits.present(), fn, "logits: required (entropy or distillation term)");
            RLPO_CHECK(in.logits.rows() == B * T && in.logits.cols() > 0, fn,
                       "logits: expected [B*T = ", B * T,
                       ", V > 0] rows (one per token of logp), given [", in.logits.rows(), ", ",
                       in.logits.cols(), "]");
        }
        if (uses_values()) {
            detail::require(fn, in.values, "values", "the value loss", lp);
            detail::require(fn, in.old_values, "old_values", "the value loss", lp);
            if (!gae) detail::require(fn, in.returns, "returns", "the value loss", lp);
        }
        if (fused()) {
            std::optional<StepResult<S>> r = fused_step(in, out, seq_adv);
            if (r) return std::move(*r);
        }
        if (gae) {  // the [B, T] advantages and returns of the plan, then the parts
            rollout::TokenAdvantages<S> ta;
            rollout::gae_advantages(*in.gae, *in.rewards, *in.old_values, *in.mask, ta);
            return composed(in, ta.advantages, out, &ta.returns);
        }
        if (!seq_adv) return composed(in, *in.advantages, out);
        // the parts take [B, T] advantages: broadcast (0 at masked tokens, as
        // rollout::broadcast_to_tokens; a NaN stays for the surrogate to name)
        const ConstMatRef<S>& a = *in.advantages;
        const ConstMatRef<S>& m = *in.mask;
        Mat<S> A(B, T);
        for (Index i = 0; i < B; ++i)
            for (Index t = 0; t < T; ++t) A(i, t) = m(i, t) != S(0) ? a(i, 0) : S(0);
        return composed(in, A, out);
    }

    /// Whether calls take the single token pass (`StepOptions::fused` and the PPO clip
    /// surrogate); otherwise each term makes its own pass.
    bool fused() const { return opts_.fused && opts_.policy.loss == policy::PolicyLoss::Vanilla; }

private:
    static constexpr const char* kFn = "train::TrainingStep";

    /// Each term its own pass, adding into the step's buffers (the definition the fused pass
    /// reproduces bit for bit). `A` the `[B, T]` advantages; `R` the returns (null: `in`'s).
    StepResult<S> composed(const StepInputs<S>& in, const ConstMatRef<S>& A,
                           const StepGradients<S>& out, const Mat<S>* R = nullptr) const {
        const ConstMatRef<S>& lp = *in.logp;
        const Index B = lp.rows(), T = lp.cols();
        const ConstMatRef<S>& m = *in.mask;
        const bool kl_loss = opts_.kl && opts_.kl_placement == KLPlacement::Loss;
        StepResult<S> res;
        const GradientOut<S> g_lp = resolve(out.logp, res.grad_logp, B, T);
        const Normalizer& norm = opts_.norm;

        // 1. policy surrogate (a batch-level selection over all ranks when sharded)
        const ConstMatRef<S>& old = in.old_logp.present() ? *in.old_logp : lp;
        const dist::Reductions* red = opts_.reductions;
        const auto pg =
            red && opts_.policy.loss == policy::PolicyLoss::KLCov
                ? policy::kl_cov(lp, old, A, m, opts_.policy.kl_cov, norm, g_lp, std::nullopt, *red)
            : red && opts_.policy.loss == policy::PolicyLoss::ClipCov
                ? policy::clip_cov(lp, old, A, m, opts_.policy.clip_cov, norm, g_lp, std::nullopt,
                                   *red)
                : policy::policy_loss(opts_.policy, lp, old, A, m, norm, g_lp);
        res.pg_loss = pg.value;
        res.metrics.merge(pg.metrics.prefixed("actor/"));

        // 2. KL
        if (kl_loss) {
            GradientOut<S> g = g_lp;
            g.coef *= opts_.kl_coef;
            const auto kl = penalties::kl_penalty(lp, *in.ref_logp, m, *opts_.kl, norm, g);
            res.kl_loss = kl.value;
            res.metrics.add("actor/kl_loss", kl.metrics.at("kl").sum, kl.metrics.at("kl").count);
        } else if (opts_.kl && in.ref_logp.present()) {
            const auto kl =
                penalties::kl_penalty(old, *in.ref_logp, m, *opts_.kl, norm, no_grad<S>());
            res.metrics.add("actor/reward_kl", kl.metrics.at("kl").sum, kl.metrics.at("kl").count);
        }

        // 3. entropy and distillation (logits)
        logits_terms(in, out, res);

        // 4. value loss
        if (uses_values()) {
            GradientOut<S> g = resolve(out.values, res.grad_values, B, T);
            g.coef *= opts_.value_coef;
            const auto vf =
                R ? critic::value_loss(*in.values, *in.old_values, *R, m, opts_.value, norm, g)
                  : critic::value_loss(*in.values, *in.old_values, *in.returns, m, opts_.value,
                                       norm, g);
            res.vf_loss = vf.value;
            res.metrics.merge(vf.metrics.prefixed("critic/"));
        }

        res.loss = res.pg_loss + res.kl_loss + res.entropy_loss + res.vf_loss + res.distill_loss;
        return res;
    }

    /// The entropy and distillation terms over the logits (shared by both paths).
    void logits_terms(const StepInputs<S>& in, const StepGradients<S>& out,
                      StepResult<S>& res) const {
        if (!uses_logits()) return;
        const Index B = in.logp.rows(), T = in.logp.cols();
        const ConstMatRef<S>& m = *in.mask;
        const ConstMatRef<S>& z = *in.logits;
        const GradientOut<S> g_z = resolve(out.logits, res.grad_logits, B * T, z.cols());
        if (opts_.entropy_coef != 0.0) {
            GradientOut<S> g = g_z;
            g.coef *= -opts_.entropy_coef;  // loss −c_H·H
            const auto h = regularizers::entropy_bonus(z, m, opts_.norm, g);
            res.entropy_loss = h.value;
            res.metrics.merge(h.metrics.prefixed("actor/"));
        }
        if (distill_) {
            GradientOut<S> g = g_z;
            g.coef *= opts_.distill_coef;
            res.distill_loss = distill_(z, m, g, opts_.norm, res.metrics);
        }
    }

    /// The single token pass (train/detail/fused.hpp): PPO clip + KL + value loss in one read
    /// of the token inputs, each gradient written once, bit-equal to `composed`. Returns
    /// nothing when one of the parts' checks fails (before anything is written): the caller
    /// then runs `composed`, which throws that error as the parts report it, in their order.
    /// When the pass flags a non-finite result, the parts run again into scratch buffers and
    /// throw it the same way.
    std::optional<StepResult<S>> fused_step(const StepInputs<S>& in, const StepGradients<S>& out,
                                            bool seq_adv) const {
        const ConstMatRef<S>& lp = *in.logp;
        const Index B = lp.rows(), T = lp.cols();
        const ConstMatRef<S>& m = *in.mask;
        const Normalizer& norm = opts_.norm;
        const bool kl_loss = opts_.kl && opts_.kl_placement == KLPlacement::Loss;
        const bool kl_metric = opts_.kl && !kl_loss && in.ref_logp.present();
        constexpr const char* pg_fn = policy::detail::PPOClipKernel<S>::name;
        constexpr const char* kl_fn = "penalties::kl_penalty";
        constexpr const char* vf_fn = critic::detail::ValueLossKernel<S>::name;
        StepResult<S> res;
        Result<S> own_lp, own_v;
        std::optional<RowWeights> w;
        std::optional<::rlpo::detail::GradWriter<S>> g_lp, g_v;
        const double coef_kl = out.logp.coef * opts_.kl_coef;
        const double coef_vf = out.values.coef * opts_.value_coef;
        try {  // every check of the parts, without side effects
            check_destination(out.logp, B, T);
            w.emplace(::rlpo::detail::row_weights_fast(pg_fn, m, norm));
            g_lp.emplace(pg_fn, own_lp, out.logp, B, T);
            if (kl_loss) ::rlpo::detail::check_finite_param(kl_fn, "GradientOut::coef", coef_kl);
            if (uses_logits()) check_destination(out.logits, B * T, in.logits.cols());
            if (uses_values()) {
                check_destination(out.values, B, T);
                g_v.emplace(vf_fn, own_v, out.values, B, T);
                ::rlpo::detail::check_finite_param(vf_fn, "GradientOut::coef", coef_vf);
            }
        } catch (const ::rlpo::invalid_argument&) {
            return std::nullopt;
        }
        const policy::detail::PPOClipKernel<S> pg(opts_.policy.vanilla);
        std::optional<penalties::detail::KLPacketConsts<S>> kc;
        if (kl_loss || kl_metric) kc.emplace(*opts_.kl);
        std::optional<critic::detail::ValueLossKernel<S>> vk;
        if (uses_values()) vk.emplace(opts_.value);
        detail::FusedSpec<S> f;
        f.mask = &m;
        f.logp = &lp;
        f.old_logp = in.old_logp.present() ? &*in.old_logp : &lp;
        if (in.gae) {
            f.gae = in.gae;
            f.rewards = &*in.rewards;
            f.old_values = &*in.old_values;
        } else {
            f.adv = &*in.advantages;
            f.seq_adv = seq_adv;
        }
        f.pg = &pg;
        if (kc) {
            f.kl = &*kc;
            f.kl_in_loss = kl_loss;
            f.ref_logp = &*in.ref_logp;
        }
        f.g_logp = &*g_lp;
        f.coef_pg = out.logp.coef;
        f.coef_kl = coef_kl;
        if (vk) {
            f.vf = &*vk;
            f.values = &*in.values;
            f.old_values = &*in.old_values;
            if (!in.gae) f.returns = &*in.returns;
            f.g_values = &*g_v;
            f.coef_vf = coef_vf;
        }
        const auto sums = detail::fused_pass(f, *w);
        if (sums.bad) {
            // the parts, into scratch buffers, throw the error (name, position) as they report it
            StepGradients<S> scratch;
            scratch.logp.mode = out.logp.mode == GradMode::None ? GradMode::None : GradMode::Own;
            scratch.logp.coef = out.logp.coef;
            scratch.logits.mode =
                out.logits.mode == GradMode::None ? GradMode::None : GradMode::Own;
            scratch.logits.coef = out.logits.coef;
            scratch.values.mode =
                out.values.mode == GradMode::None ? GradMode::None : GradMode::Own;
            scratch.values.coef = out.values.coef;
            (void)(*this).with_fused(false)(in, scratch);
            ::rlpo::detail::fail_numerical(kFn,
                                           "internal: the fused pass flagged a non-finite "
                                           "result that the parts did not report");
        }
        const double count = w->local_tokens;
        // 1. policy surrogate
        res.pg_loss = out.logp.coef * sums.pg.value;
        Metrics mp;
        pg.report(mp, sums.pg.stats, count);
        mp.with_count_epsilon(norm.count_epsilon);
        ::rlpo::detail::check_finite_result(pg_fn, res.pg_loss, mp);
        res.metrics.merge(mp.prefixed("actor/"));
        // 2. KL
        if (kc) {
            const double value = (kl_loss ? coef_kl : 1.0) * sums.kl.value;
            Metrics mk;
            mk.add("kl", sums.kl.stats[0], count);
            mk.with_count_epsilon(norm.count_epsilon);
            ::rlpo::detail::check_finite_result(kl_fn, value, mk);
            if (kl_loss) res.kl_loss = value;
            res.metrics.add(kl_loss ? "actor/kl_loss" : "actor/reward_kl", mk.at("kl").sum,
                            mk.at("kl").count);
        }
        res.grad_logp = std::move(own_lp.grad);
        // 3. entropy and distillation
        logits_terms(in, out, res);
        // 4. value loss
        if (vk) {
            res.vf_loss = coef_vf * sums.vf.value;
            Metrics mv;
            vk->report(mv, sums.vf.stats, count);
            mv.with_count_epsilon(norm.count_epsilon);
            ::rlpo::detail::check_finite_result(vf_fn, res.vf_loss, mv);
            res.metrics.merge(mv.prefixed("critic/"));
            res.grad_values = std::move(own_v.grad);
        }
        res.loss = res.pg_loss + res.kl_loss + res.entropy_loss + res.vf_loss + res.distill_loss;
        return res;
    }

    /// A copy of this step with the fused pass switched on or off.
    TrainingStep with_fused(bool on) const {
        TrainingStep s = *this;
        s.opts_.fused = on;
        return s;
    }

    /// The checks `resolve` makes of a caller's buffer (no zeroing).
    static void check_destination(const GradientOut<S>& out, Index rows, Index cols) {
        if (out.mode != GradMode::Write && out.mode != GradMode::Add) return;
        RLPO_CHECK(out.rows == rows && out.cols == cols, kFn, "StepGradients: expected a [", rows,
                   ", ", cols, "] buffer, given [", out.rows, ", ", out.cols, "]");
        RLPO_CHECK(out.data != nullptr || rows * cols == 0, kFn,
                   "StepGradients: null buffer for a [", rows, ", ", cols, "] gradient");
        RLPO_CHECK(out.stride >= cols, kFn, "StepGradients: stride ", out.stride, " < cols ", cols);
    }

    /// Turn a caller's destination into an accumulating one: Own → zeroed matrix in `own`;
    /// Write → the caller's buffer, zeroed; Add → as given; None → none. As `GradWriter`, a
    /// null buffer is accepted only for an empty shape (rows·cols = 0); otherwise a null
    /// buffer, a wrong shape and a short stride each get their own message.
    static GradientOut<S> resolve(const GradientOut<S>& out, Mat<S>& own, Index rows, Index cols) {
        switch (out.mode) {
            case GradMode::Own: own.setZero(rows, cols); return add_to<S>(own, out.coef);
            case GradMode::Write: {
                check_destination(out, rows, cols);
                for (Index i = 0; i < rows && out.data; ++i)
                    std::fill(out.data + i * out.stride, out.data + i * out.stride + cols, S(0));
                GradientOut<S> a = out;
                a.mode = GradMode::Add;
                return a;
            }
            case GradMode::Add:
            case GradMode::None: return out;
        }
        return out;
    }

    StepOptions opts_{};
    DistillHook<S> distill_{};
};

}  // namespace rlpo::train
