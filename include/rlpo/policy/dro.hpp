#pragma once
/// \file
/// DRO: direct reward optimisation — REINFORCE with a quadratic penalty on the log-ratio.
///
/// Per unmasked token, with lr = logp − old_logp (not clamped):
///
///     l = −(A·logp − ½·β·lr²)          (times the optional per-token weight w)
///
/// The quadratic term is a proximal penalty that keeps π near the sampling policy without a
/// reference model; at lr = 0 it vanishes with its gradient, so the first step is REINFORCE.
/// Its gradient equals that of DRO's squared loss (A − β·lr)²/(2β) per token (with π_old as the
/// reference and the advantage as r − V): the two differ by A²/(2β), a constant in logp.
///
/// **Gradient** w.r.t. `logp`: ∂l/∂logp = w·(−A + β·lr).
///
/// **Metrics**: `ppo_kl` = mean of −lr (an rlpo addition, as for the other surrogates).
///
/// **Sources and defaults**: Richemond et al. 2024, "Offline Regularised Reinforcement Learning
/// for Large Language Models Alignment" (DRO, arXiv 2405.19107) — its quadratic regulariser in the
/// policy log-ratio; the per-token form used by trainers registering policy loss "dro"
/// (verl-style registries), β = 0.1 (`dro_beta`).
///
/// **Bad input**: shapes differing from `logp`, β < 0 → rlpo::invalid_argument; NaN under a
/// non-zero mask → rlpo::invalid_argument naming the input; a per-token loss or gradient that
/// is not finite (±inf log-probs, finite extremes that overflow) → rlpo::invalid_argument listing
/// the inputs at that position; value and metrics checked finite (rlpo::numerical_error). An
/// empty mask gives value 0 and gradient 0.

#include <rlpo/policy/detail/driver.hpp>

namespace rlpo::policy {

struct DROOptions {
    double beta = 0.1;  ///< β: strength of the quadratic log-ratio penalty (≥ 0)
};

namespace detail {
inline void validate(const char* fn, const DROOptions& o) {
    ::rlpo::detail::check_nonnegative(fn, "beta", o.beta);
}
}  // namespace detail

namespace detail {
/// The DRO token kernel (run by `run_tokens`, policy/detail/driver.hpp). Stats: 0 −lr.
struct DROKernel {
    using Options = DROOptions;
    static constexpr const char* name = "policy::dro";
    static constexpr std::size_t stats = 1;
    static constexpr bool reads_old_logp = true;

    explicit DROKernel(const DROOptions& o) : beta((validate(name, o), o.beta)) {}

    ::rlpo::detail::LossGrad operator()(const Token& tok, std::array<double, 1>& st) const {
        const double a = tok.adv, x = tok.logp;
        const double lr = x - tok.old_logp;
        const double wt = tok.weight;
        st[0] = -lr;
        return {-wt * (a * x - 0.5 * beta * lr * lr), wt * (-a + beta * lr)};
    }
    void report(Metrics& m, const std::array<double, 1>& st, double n) const {
        m.add("ppo_kl", st[0], n);
    }

    double beta;
};
}  // namespace detail

/// DRO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> dro(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const DROOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    return detail::run_tokens<detail::DROKernel>(logp, old_logp, advantages, mask, opts, norm, out,
                                                 is_weights);
}

}  // namespace rlpo::policy
