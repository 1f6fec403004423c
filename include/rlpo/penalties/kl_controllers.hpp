#pragma once
/// \file
/// KL coefficient controllers: fixed, adaptive (PPO), DADS per-sample weights (APO), and the
/// SAFE entropy-gated penalty with its PID threshold (made differentiable).
///
/// **Fixed** (`FixedKLController`): β never changes (verl `kl_ctrl.type = fixed`).
///
/// **Adaptive** (`AdaptiveKLController`; Ziegler et al. 2019, "Fine-Tuning Language Models from
/// Human Preferences"; verl `AdaptiveKLController`, TRL's old PPOTrainer): after a step with
/// observed KL k over n samples, e = clip(k / target − 1, −0.2, 0.2) and β ← β·(1 + e·n/horizon).
/// Defaults: target 0.1 (verl `kl_ctrl.target_kl`), horizon 10000.
///
/// **DADS** (`dads_weights`; the difficulty-aware KL weights of APO): per sequence i with
/// advantage A_i and difficulty d_i = 1 − (accuracy of its group),
///     w_i = 1 − exp(−κ·(1 − d_i))   where A_i > 0 and 0 < d_i < 1,   w_i = 1 otherwise,
/// with κ = e (Euler's number) as written in the method's formula; κ is an option. Positive
/// samples of hard prompts (d near 1) get a small KL weight, so the policy may move away from
/// the reference where it found a rare success. Apply the weights by scaling the mask rows of a
/// token KL penalty and passing the unweighted counts to the Normalizer (`num_tokens`,
/// `num_seqs`), so the weights do not change the denominators.
///
/// **SAFE** (`SAFEKLController`): the entropy-gated KL penalty with a dual-timescale KL tracker
/// and a PID-adjusted threshold. Per step, with the batch KL k (token mean of logp − ref_logp),
/// mean reward ρ and policy entropy H:
///     k_s ← 0.9·k_s + 0.1·k,   k_l ← 0.99·k_l + 0.01·k                 (EMA trackers)
///     PID on the reward velocity: ρ̄ ← 0.95·ρ̄ + 0.05·ρ (the first step only initialises ρ̄ and
///       outputs 0), error e = (ρ̄_new − ρ̄_old) − 0.001, I ← clip(I + e, ±1),
///       u = kp·e + ki·I + kd·(e − e_prev)                              (kp 0.3, ki 0.01, kd 0.05)
///     τ = clip((τ_0 + u)·φ, 0.1, 0.6)                                 (τ_0 = 0.3)
///     penalty = c·(k_s − τ)²·max(0.5, H_0/(H + 0.1)) if k_s > τ, else 0  (c = 0.1, H_0 = 2)
/// where φ is the phase multiplier of the reward history (warm-up < 50 steps: 1.5; climbing,
/// mean of the last 50 > mean of the 50 before + 0.01: 1.2; converged, std of the last 50 < 0.02
/// and mean > 0.7: 1.0; plateau otherwise: 0.8; `phase_aware = false` sets φ = 1).
///
/// **Difference from the SAFE code.** There the penalty is computed from `kl.item()`, a Python
/// float, and added to the loss as a constant: it has no gradient, so it never acts on the policy
/// (it only shifts the logged loss). Here `penalty(logp, ref_logp, mask, …)` returns the same
/// value computed with k = k(θ) the differentiable batch KL, and its gradient w.r.t. `logp`:
///     ∂penalty/∂logp_it = c·2(k_s − τ)·gate·0.1·m_it/N_tok        (0 where k_s ≤ τ)
/// (the EMA state, the threshold and the entropy gate are constants for the gradient).
/// `step(k, H, ρ)` advances the state exactly as the SAFE code's `compute_penalty` does and
/// returns its (non-differentiable) value; `penalty(…)` does not change the state and equals
/// what `step` would return for k = k(θ).
///
/// **Bad input**: β < 0, target ≤ 0, horizon ≤ 0, n < 0, non-finite KL → rlpo::invalid_argument;
/// DADS: length mismatch, accuracy outside [0, 1], κ ≤ 0; SAFE: decays outside [0, 1),
/// threshold bounds not 0 < min ≤ max, c < 0, H_0 ≤ 0, entropy < 0 or non-finite reward.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <numeric>

namespace rlpo::penalties {

/// β fixed (verl `kl_ctrl.type = fixed`).
class FixedKLController {
public:
    explicit FixedKLController(double beta = 0.001) : beta_(beta) {
        ::rlpo::detail::check_nonnegative("penalties::FixedKLController", "beta", beta);
    }
    double value() const { return beta_; }
    /// No-op (kept so both controllers are used the same way).
    void update(double /*kl*/, double /*n_steps*/) {}

private:
    double beta_;
};

struct AdaptiveKLOptions {
    double init_beta = 0.001;  ///< initial β (verl `kl_ctrl.kl_coef`)
    double target = 0.1;       ///< target KL
    double horizon = 10000.0;  ///< samples over which the error is corrected
};

/// Adaptive β (Ziegler et al. 2019): β ← β·(1 + clip(kl/target − 1, ±0.2)·n/horizon).
class AdaptiveKLController {
public:
    explicit AdaptiveKLController(AdaptiveKLOptions o = {}) : o_(o), beta_(o.init_beta) {
        constexpr const char* fn = "penalties::AdaptiveKLController";
        ::rlpo::detail::check_nonnegative(fn, "init_beta", o.init_beta);
        ::rlpo::detail::check_positive(fn, "target", o.target);
        ::rlpo::detail::check_positive(fn, "horizon", o.horizon);
    }
    double value() const { return beta_; }
    /// Observed KL `kl` (the batch mean, as verl passes it) over `n_steps` samples.
    void update(double kl, double n_steps) {
        constexpr const char* fn = "penalties::AdaptiveKLController::update";
        ::rlpo::detail::check_finite_param(fn, "kl", kl);
        ::rlpo::detail::check_nonnegative(fn, "n_steps", n_steps);
        const double err = std::clamp(kl / o_.target - 1.0, -0.2, 0.2);
        beta_ *= 1.0 + err * n_steps / o_.horizon;
    }

private:
    AdaptiveKLOptions o_;
    double beta_;
};

/// DADS per-sequence KL weights (APO). `advantages` and `group_accuracy` have one entry per
/// sequence (the accuracy of the sequence's group, in [0, 1]).
template <class DA, class DC>
inline Vec<double> dads_weights(const Eigen::MatrixBase<DA>& advantages,
                                const Eigen::MatrixBase<DC>& group_accuracy,
                                double kappa = 2.718281828459045) {
    constexpr const char* fn = "penalties::dads_weights";
    RLPO_CHECK(advantages.cols() == 1 || advantages.rows() == 1, fn,
               "advantages: expected a vector (one entry per sequence), given [", advantages.rows(),
               ", ", advantages.cols(), "]");
    ::rlpo::detail::check_length(fn, "group_accuracy", group_accuracy.derived(), advantages.size(),
                                 "advantages");
    ::rlpo::detail::check_positive(fn, "kappa", kappa);
    const Index n = advantages.size();
    Vec<double> w(n);
    for (Index i = 0; i < n; ++i) {
        const double a = static_cast<double>(advantages.derived()(i));
        const double acc = static_cast<double>(group_accuracy.derived()(i));
        RLPO_CHECK(acc >= 0.0 && acc <= 1.0, fn, "group_accuracy: must be in [0, 1], given ", acc,
                   " at ", i);
        RLPO_CHECK(!std::isnan(a), fn, "advantages: NaN at ", i);
        const double d = 1.0 - acc;
        w(i) = (a > 0 && d > 0 && d < 1) ? 1.0 - std::exp(-kappa * (1.0 - d)) : 1.0;
    }
    return w;
}

struct SAFEOptions {
    double base_threshold = 0.3;  ///< τ_0
    double threshold_min = 0.1;   ///< τ is clipped to [min, max]
    double threshold_max = 0.6;
    double entropy_floor = 2.0;  ///< H_0 of the gate max(0.5, H_0/(H + 0.1))
    double coef = 0.1;           ///< c
    double short_decay = 0.9;    ///< k_s EMA decay
    double long_decay = 0.99;    ///< k_l EMA decay
    double kp = 0.3, ki = 0.01, kd = 0.05;
    double integral_clip = 1.0;
    double reward_decay = 0.95;  ///< reward EMA of the PID
    double target_velocity = 0.001;
    bool phase_aware = true;  ///< phase multiplier φ from the reward history
};

/// What one SAFE step computed.
struct SAFEStep {
    double penalty = 0.0;
    double threshold = 0.0;
    double kl_short = 0.0;
    double kl_long = 0.0;
    double entropy_factor = 1.0;
    bool active = false;
};

/// SAFE's entropy-gated KL penalty with dual EMAs and a PID threshold (see the file comment).
class SAFEKLController {
public:
    explicit SAFEKLController(SAFEOptions o = {}) : o_(o) {
        constexpr const char* fn = "penalties::SAFEKLController";
        for (double dcy : {o.short_decay, o.long_decay, o.reward_decay})
            RLPO_CHECK(dcy >= 0.0 && dcy < 1.0, fn, "decay: must be in [0, 1), given ", dcy);
        RLPO_CHECK(o.threshold_min > 0 && o.threshold_min <= o.threshold_max &&
                       std::isfinite(o.threshold_max),
                   fn, "threshold_min/threshold_max: need 0 < min <= max, given ", o.threshold_min,
                   ", ", o.threshold_max);
        ::rlpo::detail::check_nonnegative(fn, "coef", o.coef);
        ::rlpo::detail::check_positive(fn, "entropy_floor", o.entropy_floor);
        ::rlpo::detail::check_nonnegative(fn, "integral_clip", o.integral_clip);
        for (double g : {o.kp, o.ki, o.kd, o.base_threshold, o.target_velocity})
            ::rlpo::detail::check_finite_param(fn, "gains/threshold", g);
    }

    /// Advance the state with this step's batch KL, policy entropy and mean reward, as the SAFE
    /// code's `compute_penalty` does; returns its (non-differentiable) penalty.
    SAFEStep step(double kl, double entropy, double reward) {
        constexpr const char* fn = "penalties::SAFEKLController::step";
        ::rlpo::detail::check_finite_param(fn, "kl", kl);
        check_entropy_reward(fn, entropy, reward);
        kl_short_ = o_.short_decay * kl_short_ + (1.0 - o_.short_decay) * kl;
        kl_long_ = o_.long_decay * kl_long_ + (1.0 - o_.long_decay) * kl;
        const double tau = advance_threshold(reward);
        return make_step(kl_short_, tau, entropy);
    }

    /// Differentiable penalty for the current batch: the value `step(k(θ), entropy, reward)`
    /// would return with k(θ) = token mean of (logp − ref_logp) over the mask, and its gradient
    /// w.r.t. `logp`. Does not change the state. Metrics: `safe_penalty`, `safe_threshold`,
    /// `safe_kl_short`, `safe_entropy_factor`, `kl` (the batch KL).
    template <class DL, class DR, class DM>
    Result<::rlpo::detail::scalar_t<DL>> penalty(
        const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DR>& ref_logp,
        const Eigen::MatrixBase<DM>& mask, double entropy, double reward,
        const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {}) const {
        using S = ::rlpo::detail::scalar_t<DL>;
        constexpr const char* fn = "penalties::SAFEKLController::penalty";
        const ConstMatRef<S> lp(logp.derived()), rlp(ref_logp.derived()), m(mask.derived());
        ::rlpo::detail::check_same_shape(fn, "ref_logp", rlp, "logp", lp);
        ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
        check_entropy_reward(fn, entropy, reward);
        const RowWeights w = row_weights(fn, m, Normalizer{});
        double sum = 0.0;
        for (Index i = 0; i < lp.rows(); ++i)
            for (Index t = 0; t < lp.cols(); ++t) {
                const double mk = static_cast<double>(m(i, t));
                if (mk == 0) continue;
                const double d = static_cast<double>(lp(i, t)) - static_cast<double>(rlp(i, t));
                if (std::isnan(d)) {
                    if (std::isnan(static_cast<double>(lp(i, t))))
                        ::rlpo::detail::fail(fn, "logp: NaN at [", i, ", ", t,
                                             "] under a non-zero mask");
                    if (std::isnan(static_cast<double>(rlp(i, t))))
                        ::rlpo::detail::fail(fn, "ref_logp: NaN at [", i, ", ", t,
                                             "] under a non-zero mask");
                    ::rlpo::detail::fail(fn, "inputs at [", i, ", ", t, "] give an undefined KL");
                }
                sum += mk * d;
            }
        const double N = w.local_tokens;
        const double kl = N > 0 ? sum / N : 0.0;
        RLPO_CHECK(std::isfinite(kl), fn, "the batch KL is not finite (", kl, ")");
        SAFEKLController next = *this;
        const double ks = o_.short_decay * kl_short_ + (1.0 - o_.short_decay) * kl;
        const double tau = next.advance_threshold(reward);
        const SAFEStep st = make_step(ks, tau, entropy);
        // ∂penalty/∂k = c·2(k_s − τ)·gate·(1 − decay); ∂k/∂logp_it = m_it / N
        const double dk =
            st.active ? o_.coef * 2.0 * (ks - tau) * st.entropy_factor * (1.0 - o_.short_decay)
                      : 0.0;
        Result<S> res;
        const ::rlpo::detail::GradWriter<S> g(fn, res, out, lp.rows(), lp.cols());
        for (Index i = 0; i < lp.rows(); ++i)
            for (Index t = 0; t < lp.cols(); ++t) {
                const double mk = static_cast<double>(m(i, t));
                if (mk == 0 || N <= 0)
                    g.zero(i, t);
                else
                    g.put(i, t, dk * mk / N);
            }
        res.value = g.coef() * st.penalty;
        res.metrics.set("safe_penalty", st.penalty);
        res.metrics.set("safe_threshold", st.threshold);
        res.metrics.set("safe_kl_short", st.kl_short);
        res.metrics.set("safe_entropy_factor", st.entropy_factor);
        res.metrics.add("kl", sum, N);
        return res;
    }

    double kl_short() const { return kl_short_; }
    double kl_long() const { return kl_long_; }
    /// φ of the last step (1 when not phase-aware).
    double phase_multiplier() const { return phase_mult_; }

private:
    static void check_entropy_reward(const char* fn, double entropy, double reward) {
        ::rlpo::detail::check_nonnegative(fn, "entropy", entropy);
        ::rlpo::detail::check_finite_param(fn, "reward", reward);
    }
    SAFEStep make_step(double ks, double tau, double entropy) const {
        SAFEStep s;
        s.kl_short = ks;
        s.kl_long = kl_long_;
        s.threshold = tau;
        if (ks > tau) {
            s.entropy_factor = std::max(0.5, o_.entropy_floor / (entropy + 0.1));
            s.penalty = o_.coef * (ks - tau) * (ks - tau) * s.entropy_factor;
            s.active = true;
        }
        return s;
    }
    /// Phase detector and PID with this step's reward; returns the clipped threshold.
    double advance_threshold(double reward) {
        // phase (reward history windows of 50)
        history_.push_back(reward);
        if (history_.size() > 100) history_.pop_front();
        phase_mult_ = 1.0;
        if (o_.phase_aware) {
            const std::size_t n = history_.size();
            if (n < 50) {
                phase_mult_ = 1.5;
            } else {
                const auto recent_begin = history_.end() - 50;
                const double recent = std::accumulate(recent_begin, history_.end(), 0.0) / 50.0;
                const double old =
                    n >= 100 ? std::accumulate(history_.begin(), recent_begin, 0.0) / 50.0 : recent;
                double var = 0.0;
                for (auto it = recent_begin; it != history_.end(); ++it)
                    var += (*it - recent) * (*it - recent);
                const double sd = std::sqrt(var / 50.0);  // population std, as numpy's default
                if (recent > old + 0.01)
                    phase_mult_ = 1.2;
                else if (sd < 0.02 && recent > 0.7)
                    phase_mult_ = 1.0;
                else
                    phase_mult_ = 0.8;
            }
        }
        // PID on the reward velocity
        double u = 0.0;
        if (!has_reward_ema_) {
            reward_ema_ = reward;
            has_reward_ema_ = true;
        } else {
            const double old = reward_ema_;
            reward_ema_ = o_.reward_decay * reward_ema_ + (1.0 - o_.reward_decay) * reward;
            const double err = (reward_ema_ - old) - o_.target_velocity;
            integral_ = std::clamp(integral_ + err, -o_.integral_clip, o_.integral_clip);
            u = o_.kp * err + o_.ki * integral_ + o_.kd * (err - prev_error_);
            prev_error_ = err;
        }
        return std::clamp((o_.base_threshold + u) * phase_mult_, o_.threshold_min,
                          o_.threshold_max);
    }

    SAFEOptions o_;
    double kl_short_ = 0.0, kl_long_ = 0.0;
    double integral_ = 0.0, prev_error_ = 0.0, reward_ema_ = 0.0;
    bool has_reward_ema_ = false;
    double phase_mult_ = 1.0;
    std::deque<double> history_;
};

}  // namespace rlpo::penalties
