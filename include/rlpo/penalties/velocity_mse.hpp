#pragma once
/// \file
/// UniGRPO's velocity-field penalty for flow-matching policies: β_v·MSE(v_θ, v_ref).
///
/// In flow-matching GRPO (Flow-GRPO) each denoising step is a Gaussian policy whose mean is a
/// function of the predicted velocity; the KL between the policy and the reference step is
/// ‖μ_θ − μ_ref‖²/(2σ²), proportional to ‖v_θ − v_ref‖². UniGRPO replaces that latent KL by the
/// squared distance between the velocity fields directly, with its own coefficient β_v:
///
///     ℓ_n = (1/D)·Σ_j (v_θ,nj − v_ref,nj)²     (`Reduction::Mean`, default: the MSE)
///     ℓ_n = Σ_j (v_θ,nj − v_ref,nj)²           (`Reduction::Sum`: the squared norm)
///     loss = β_v · Σ_n c_n·m_n·ℓ_n
///
/// over N rows (one per sample × denoising step) of D latent entries, aggregated with a mask in
/// the token layout `[B, T]`, B·T = N (row n = i·T + t): B samples, T steps, any Normalizer mode
/// (TokenMean = the mean over all unmasked (sample, step) rows). **Gradient** w.r.t. v_θ:
/// β_v·c_n·m_n·2(v_θ − v_ref)/D (Mean) or without the 1/D (Sum); v_ref is a constant. Metric
/// `velocity_mse`: the mask-weighted mean of ℓ_n (without β_v).
///
/// **Bad input**: shapes (v_ref ≠ v, mask entries ≠ N) → rlpo::invalid_argument; β_v < 0 →
/// invalid_argument; NaN under a non-zero mask → invalid_argument naming the input and [n, j];
/// ±inf under a non-zero mask → invalid_argument naming the input (the gradient would be ±inf
/// or NaN). Finite inputs whose difference, square sum, value or metric overflows, or whose
/// gradient entry exceeds the storage type → rlpo::numerical_error naming [n, j] or the quantity.
/// Allocates: nothing besides the result.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <cmath>
#include <limits>

namespace rlpo::penalties {

struct VelocityMSEOptions {
    enum class Reduction { Mean, Sum };
    double beta = 1.0;  ///< β_v
    Reduction reduction = Reduction::Mean;
};

/// β_v·MSE between the policy velocity `v` and the reference velocity `v_ref` (both `[N, D]`),
/// aggregated over `mask` (token layout, N entries). Gradient w.r.t. `v`.
template <class DV, class DR, class DM>
Result<::rlpo::detail::scalar_t<DV>> velocity_mse(
    const Eigen::MatrixBase<DV>& v, const Eigen::MatrixBase<DR>& v_ref,
    const Eigen::MatrixBase<DM>& mask, const VelocityMSEOptions& opts = {},
    const Normalizer& norm = {}, const GradientOut<::rlpo::detail::scalar_t<DV>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DV>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "penalties::velocity_mse";
    const ConstMatRef<S> x(v.derived()), y(v_ref.derived());
    const ConstMatRef<::rlpo::detail::scalar_t<DM>> m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "v_ref", y, "v", x);
    RLPO_CHECK(m.size() == x.rows(), fn, "mask: expected ", x.rows(),
               " entries (one per row of v, token layout [B, T] with B·T = N), given [", m.rows(),
               ", ", m.cols(), "]");
    ::rlpo::detail::check_nonnegative(fn, "beta", opts.beta);
    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, x.rows(), x.cols());
    const Index N = x.rows(), D = x.cols(), T = m.cols();
    const double per = opts.reduction == VelocityMSEOptions::Reduction::Mean && D > 0
                           ? 1.0 / static_cast<double>(D)
                           : 1.0;
    double value = 0.0, metric = 0.0;
    for (Index n = 0; n < N; ++n) {
        const double mk = static_cast<double>(m(n / T, n % T));
        if (mk == 0) {
            for (Index j = 0; j < D; ++j) g.zero(n, j);
            continue;
        }
        const double c = w.c[static_cast<std::size_t>(n / T)];
        double s = 0.0;
        for (Index j = 0; j < D; ++j) {
            const double diff = static_cast<double>(x(n, j)) - static_cast<double>(y(n, j));
            if (!std::isfinite(diff)) {
                const bool fx = std::isfinite(static_cast<double>(x(n, j))),
                           fy = std::isfinite(static_cast<double>(y(n, j)));
                if (fx && fy)
                    ::rlpo::detail::fail_numerical(fn, "v - v_ref overflows at [", n, ", ", j,
                                                   "] (finite entries of opposite sign)");
                ::rlpo::detail::fail(fn, fx ? "v_ref" : "v", ": non-finite value at [", n, ", ", j,
                                     "] under a non-zero mask (NaN and ±inf are rejected)");
            }
            s += diff * diff;
            const double gv = opts.beta * c * mk * 2.0 * diff * per;
            if (g.active() &&
                !(std::abs(static_cast<S>(g.coef() * gv)) < std::numeric_limits<S>::infinity()))
                ::rlpo::detail::fail_numerical(fn, "gradient at [", n, ", ", j,
                                               "] overflows the storage type");
            g.put(n, j, gv);
        }
        value += c * mk * s * per;
        metric += mk * s * per;
    }
    res.value = g.coef() * opts.beta * value;
    res.metrics.add("velocity_mse", metric, w.local_tokens);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::penalties
