#pragma once
/// \file
/// LD-DPO's length-desensitised sequence log-probs (arXiv 2409.06411; TRL DPOConfig `ld_alpha`):
/// the summed log-probs that `dpo_loss` then reads, with the tokens past the pair's shared
/// length down-weighted by α.
///
/// Inputs: per-token log-probs `[2B, T]` and a 0/1 completion mask `[2B, T]` in TRL's
/// concatenated layout (rows 0..B−1 the chosen completions, rows B..2B−1 the rejected ones, pair
/// i = rows i and B+i). With ℓ_i = Σ_t mask[i,t] the completion lengths, s_i = min(ℓ_i, ℓ_{B+i})
/// the pair's shared length (the same for both rows of a pair) and p_{i,t} = Σ_{t'≤t} mask[i,t']
/// the position of token t in its completion:
///
///     w[i,t]  = mask[i,t] · (1 if p_{i,t} ≤ s_i else α)
///     logps_i = Σ_t w[i,t] · logp[i,t]      (returned as [2, B]: row 0 chosen, row 1 rejected)
///
/// α = 1 gives the plain sums; α = 0 keeps only the shared prefix. TRL applies the same weights
/// to the reference model's log-probs: call `ld_logps` on both.
///
/// **Gradient** (`ld_logps_vjp`): the map is linear, ∂logps_i/∂logp[i,t] = w[i,t]; given the
/// `[2, B]` gradient g of a loss w.r.t. the sequence log-probs (`dpo_loss`'s), the token gradient
/// is g_i·w[i,t] (`[2B, T]`, exactly 0 where the mask is 0).
///
/// **Anchor**: TRL `trl/trainer/dpo_trainer.py` (`_compute_loss` and the reference log-probs,
/// main f2cd577, 2026-07): `comp_pos = cumsum(mask)`, shared = 0 < pos ≤ min length, tail = pos
/// > min length, logps = shared + ld_alpha·tail on log-probs zeroed outside the mask. rlpo skips
/// masked tokens instead of multiplying them by 0 (a non-finite log-prob under mask 0 is ignored,
/// as TRL's zeroing does). TRL's `sft` loss type reads the raw token log-probs, not these.
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::ld_logps` /
/// `preference::ld_logps_vjp`): an odd number of rows, log-probs and mask (or g and the mask's
/// pairs) of different shapes, mask entries other than 0 and 1, NaN or ±inf log-probs under
/// mask 1, α outside [0, 1] (TRL's documented range) or non-finite, g non-finite.

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>

namespace rlpo::preference {

namespace detail {

inline void check_ld_alpha(const char* fn, double a) {
    RLPO_CHECK(std::isfinite(a) && a >= 0 && a <= 1, fn, "ld_alpha: must be in [0, 1], given ", a);
}

/// Checks the mask (0/1, even rows) and calls f(row, t, weight) for every token under mask 1.
template <class M, class F>
void for_each_ld_weight(const char* fn, const Eigen::MatrixBase<M>& mask, double alpha, F&& f) {
    const auto& m = mask.derived();
    RLPO_CHECK(m.rows() % 2 == 0, fn, "mask: expected 2B rows ([chosen; rejected]), given ",
               m.rows());
    const Index B = m.rows() / 2, T = m.cols();
    for (Index i = 0; i < m.rows(); ++i)
        for (Index t = 0; t < T; ++t) {
            const double v = static_cast<double>(m(i, t));
            RLPO_CHECK(v == 0 || v == 1, fn, "mask: entries must be 0 or 1, given ", v, " at [", i,
                       ", ", t, "]");
        }
    const auto len = [&](Index i) {
        double s = 0;
        for (Index t = 0; t < T; ++t) s += static_cast<double>(m(i, t));
        return s;
    };
    for (Index k = 0; k < B; ++k) {
        const double shared = std::min(len(k), len(B + k));
        for (const Index i : {k, B + k}) {
            double pos = 0;
            for (Index t = 0; t < T; ++t) {
                if (static_cast<double>(m(i, t)) == 0) continue;
                pos += 1;
                f(i, t, pos <= shared ? 1.0 : alpha);
            }
        }
    }
}

}  // namespace detail

/// The LD-DPO sequence log-probs `[2, B]` (row 0 chosen, row 1 rejected) of the token log-probs
/// `[2B, T]` under the 0/1 completion mask (see the file comment).
template <class L, class M>
Mat<::rlpo::detail::scalar_t<L>> ld_logps(const Eigen::MatrixBase<L>& token_logps,
                                          const Eigen::MatrixBase<M>& mask, double ld_alpha) {
    using S = ::rlpo::detail::scalar_t<L>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "preference::ld_logps";
    detail::check_ld_alpha(fn, ld_alpha);
    const auto& x = token_logps.derived();
    RLPO_CHECK(x.rows() == mask.rows() && x.cols() == mask.cols(), fn,
               "token_logps: expected the mask's shape [", mask.rows(), ", ", mask.cols(),
               "], given [", x.rows(), ", ", x.cols(), "]");
    const Index B = mask.rows() / 2;
    Eigen::Matrix<double, Eigen::Dynamic, 1> acc =
        Eigen::Matrix<double, Eigen::Dynamic, 1>::Zero(mask.rows());
    detail::for_each_ld_weight(fn, mask, ld_alpha, [&](Index i, Index t, double w) {
        const double v = static_cast<double>(x(i, t));
        RLPO_CHECK(std::isfinite(v), fn, "token_logps: non-finite value ", v, " at [", i, ", ", t,
                   "] under mask 1");
        acc(i) += w * v;
    });
    Mat<S> out(2, B);
    for (Index k = 0; k < B; ++k) {
        out(0, k) = static_cast<S>(acc(k));
        out(1, k) = static_cast<S>(acc(B + k));
    }
    return out;
}

/// The token gradient `[2B, T]` of a loss whose gradient w.r.t. the LD-DPO sequence log-probs is
/// `grad` (`[2, B]`, row 0 chosen, row 1 rejected): grad_i·w[i,t], 0 where the mask is 0.
template <class G, class M>
Mat<::rlpo::detail::scalar_t<G>> ld_logps_vjp(const Eigen::MatrixBase<G>& grad,
                                              const Eigen::MatrixBase<M>& mask, double ld_alpha) {
    using S = ::rlpo::detail::scalar_t<G>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "preference::ld_logps_vjp";
    detail::check_ld_alpha(fn, ld_alpha);
    const auto& g = grad.derived();
    const Index B = mask.rows() / 2;
    RLPO_CHECK(g.rows() == 2 && g.cols() == B, fn, "grad: expected shape [2, ", B,
               "] (the mask's pairs), given [", g.rows(), ", ", g.cols(), "]");
    for (Index r = 0; r < 2; ++r)
        for (Index k = 0; k < B; ++k)
            RLPO_CHECK(std::isfinite(static_cast<double>(g(r, k))), fn, "grad: non-finite value ",
                       static_cast<double>(g(r, k)), " at [", r, ", ", k, "]");
    Mat<S> out = Mat<S>::Zero(mask.rows(), mask.cols());
    detail::for_each_ld_weight(fn, mask, ld_alpha, [&](Index i, Index t, double w) {
        out(i, t) = static_cast<S>(w * static_cast<double>(i < B ? g(0, i) : g(1, i - B)));
    });
    return out;
}

}  // namespace rlpo::preference
