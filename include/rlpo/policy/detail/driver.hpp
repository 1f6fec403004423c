#pragma once
/// \file
/// The shared driver of the policy surrogates (internal): everything a surrogate does besides
/// its per-token math.
///
/// A token-level surrogate is an options struct plus a *kernel*:
///
/// ```cpp
/// struct CISPOKernel {
///     using Options = CISPOOptions;
///     static constexpr const char* name = "policy::cispo";  // prefix of its error messages
///     static constexpr std::size_t stats = 3;                // K metric accumulators
///     static constexpr bool reads_old_logp = true;           // false: no old_logp input (GPG)
///     explicit CISPOKernel(const CISPOOptions& o);           // validates o (throws)
///     LossGrad operator()(const Token& tok, std::array<double, 3>& st) const;  // l, ∂l/∂logp
///     void report(Metrics& m, const std::array<double, 3>& st, double n) const;
/// };
/// ```
///
/// and its public function is one line, `return detail::run_tokens<CISPOKernel>(…)`. The
/// driver owns the rest, in this order: the float/double static_assert, the `[B, T]` views, the
/// shape checks against `logp`, the kernel's option validation, the optional `is_weights`
/// (checked; read per token into `Token::weight`), the aggregation factors (with a forced mode
/// when the options carry `aggregation`), the gradient sink (`GradWriter`), the token pass
/// (`token_pass`: masked tokens never read, NaN diagnosis naming the input, rows in parallel
/// and combined in row order) and the metrics (`report`). Vectorised kernels (PPO clip) use
/// `run_tokens_simd`, the same driver over `token_pass_simd` with the fast row factors.
/// Sequence-level surrogates (GSPO, GMPO, LUSPO) share the preamble and the row pass through
/// `SurrogateCall::rows`; KL-Cov selects its tokens, then runs `SurrogateCall::tokens`. Clip-Cov keeps its own preamble: its public `clip_cov_selection`
/// checks the inputs (shapes, NaN) before `is_weights`, and that order is its documented one.

#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/policy/detail/common.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <optional>
#include <type_traits>

namespace rlpo::policy::detail {

/// One unmasked token's inputs, read as double by the driver.
struct Token {
    double logp;      ///< x = log π(y_t)
    double old_logp;  ///< log π_old(y_t) (0 when the kernel does not read it)
    double adv;       ///< A
    double weight;    ///< the `is_weights` entry, 1 without weights
};

template <class O, class = void>
struct has_forced_aggregation : std::false_type {};
template <class O>
struct has_forced_aggregation<O, std::void_t<decltype(std::declval<const O&>().aggregation)>>
    : std::true_type {};

/// The aggregation mode an options struct forces (its `aggregation` member), if any.
template <class O>
inline std::optional<Aggregation> forced_aggregation(const O& o) {
    if constexpr (has_forced_aggregation<O>::value)
        return o.aggregation;
    else
        return std::nullopt;
}

/// The preamble every surrogate shares: views, shape checks, option validation (constructing
/// the kernel), weights check, row factors and gradient sink. `res` is returned by `finish`.
template <class S, class Kernel>
struct SurrogateCall {
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    static constexpr const char* fn = Kernel::name;

    template <class DL, class DO, class DA, class DM>
    SurrogateCall(const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
                  const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
                  const typename Kernel::Options& opts, const Normalizer& norm,
                  const GradientOut<S>& out, const TokenWeights<S>& weights, bool fast_weights)
        : lp(logp.derived()),
          olp(old_logp.derived()),
          A(advantages.derived()),
          m(mask.derived()),
          kernel(checked(opts)),
          is_weights(weights),
          w(row_factors(norm, forced_aggregation(opts), fast_weights)),
          g(fn, res, out, lp.rows(), lp.cols()),
          count_epsilon(norm.count_epsilon) {}

    /// Sets the value from the pass sum (times the GradientOut coefficient), gives the mean
    /// metrics the normalizer's count ε, checks that value and metrics are finite (a sum of
    /// finite per-token losses can still overflow: `rlpo::numerical_error`) and hands back res.
    Result<S> finish(double pass_value) {
        res.value = g.coef() * pass_value;
        res.metrics.with_count_epsilon(count_epsilon);
        ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
        return std::move(res);
    }
    double weight_at(Index i, Index t) const { return detail::weight_at(is_weights, i, t); }

    /// log π − log π_old at token (i, t); NaN (+inf and −inf inputs) is an invalid_argument
    /// naming the token.
    double log_ratio(Index i, Index t) const {
        const double lr = static_cast<double>(lp(i, t)) - static_cast<double>(olp(i, t));
        if (std::isnan(lr))
            ::rlpo::detail::fail_nan_at<S>(fn, i, t, {{"logp", &lp}, {"old_logp", &olp}});
        return lr;
    }

    /// Writes row i of the gradient: `grad(t, m_it)` at each unmasked token, 0 at masked ones;
    /// an entry beyond the storage type (after the GradientOut coefficient) is a
    /// numerical_error naming it. Nothing when no gradient is wanted.
    template <class F>
    void put_row(Index i, F&& grad) const {
        if (!g.active()) return;
        for (Index t = 0; t < lp.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) {
                g.zero(i, t);
                continue;
            }
            const double gv = grad(t, mk);
            if (!(std::abs(static_cast<S>(g.coef() * gv)) < std::numeric_limits<S>::infinity()))
                ::rlpo::detail::fail_grad_overflow(fn, i, t);
            g.put(i, t, gv);
        }
    }

    /// The token pass over this call's inputs (`token_pass`): `body(i, t, stats) -> LossGrad`
    /// for each unmasked token.
    template <std::size_t K, class F>
    ::rlpo::detail::TokenPassResult<K> tokens(F&& body) const {
        using NI = ::rlpo::detail::NamedInput<S>;
        const ConstMatRef<S>* wts = is_weights ? &*is_weights : nullptr;
        if constexpr (Kernel::reads_old_logp) {
            if (wts)
                return ::rlpo::detail::token_pass<K, S>(
                    fn, m, w, g,
                    {NI{"logp", &lp}, NI{"old_logp", &olp}, NI{"advantages", &A},
                     NI{"is_weights", wts}},
                    body);
            return ::rlpo::detail::token_pass<K, S>(
                fn, m, w, g, {NI{"logp", &lp}, NI{"old_logp", &olp}, NI{"advantages", &A}}, body);
        } else {
            if (wts)
                return ::rlpo::detail::token_pass<K, S>(
                    fn, m, w, g, {NI{"logp", &lp}, NI{"advantages", &A}, NI{"is_weights", wts}},
                    body);
            return ::rlpo::detail::token_pass<K, S>(fn, m, w, g,
                                                    {NI{"logp", &lp}, NI{"advantages", &A}}, body);
        }
    }

    /// The row pass of the sequence-level surrogates: `row(i, part)` for each row with at least
    /// one token, after the row's NaN check; it fills the row's K partial sums (its value term,
    /// before the GradientOut coefficient, first) and writes its gradient through `g`. A row
    /// without tokens gets gradient 0 and contributes 0. Rows run in parallel, their sums are
    /// added in row order and the first error in row order is rethrown (`ordered_row_sums`).
    template <std::size_t K, class F>
    std::array<double, K> rows(F&& row) const {
        const Index B = lp.rows(), T = lp.cols();
        return ::rlpo::detail::ordered_row_sums<K>(
            B, B * T > 32768, [&](Index i, std::array<double, K>& part) {
                if (w.len[static_cast<std::size_t>(i)] <= 0) {
                    for (Index t = 0; t < T; ++t) g.zero(i, t);
                    return;
                }
                check_row_nan<S>(fn, m, i, {{"logp", &lp}, {"old_logp", &olp}, {"advantages", &A}});
                row(i, part);
            });
    }

    const ConstMatRef<S> lp, olp, A, m;
    const Kernel kernel;
    const TokenWeights<S>& is_weights;
    Result<S> res;
    const RowWeights w;
    const ::rlpo::detail::GradWriter<S> g;
    const double count_epsilon;

private:
    // Runs before the kernel is built: the shape checks come first, then the kernel validates
    // its options (its constructor), then is_weights is checked (in row_factors).
    const typename Kernel::Options& checked(const typename Kernel::Options& opts) const {
        if constexpr (Kernel::reads_old_logp) {
            ::rlpo::detail::check_surrogate_shapes(fn, lp, olp, A, m);
        } else {
            ::rlpo::detail::check_same_shape(fn, "advantages", A, "logp", lp);
            ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
        }
        return opts;
    }
    RowWeights row_factors(const Normalizer& norm, const std::optional<Aggregation>& forced,
                           bool fast) const {
        check_weights(fn, is_weights, m);
        if (fast) return ::rlpo::detail::row_weights_fast(fn, m, with_mode(norm, forced));
        return row_weights(fn, m, with_mode(norm, forced));
    }
};

/// The token pass of `run_tokens` over the call's views. (A template on the kernel and the
/// scalar only, as `token_sums_simd`: the callers' input expression types, e.g. a `Map` or a
/// constant, share one copy of the pass.)
template <class S, class Kernel>
::rlpo::detail::TokenPassResult<Kernel::stats> token_sums(const SurrogateCall<S, Kernel>& c) {
    constexpr std::size_t K = Kernel::stats;
    return c.template tokens<K>(
        [&](Index i, Index t, std::array<double, K>& st) -> ::rlpo::detail::LossGrad {
            Token tok{static_cast<double>(c.lp(i, t)), 0.0, static_cast<double>(c.A(i, t)),
                      c.weight_at(i, t)};
            if constexpr (Kernel::reads_old_logp) tok.old_logp = static_cast<double>(c.olp(i, t));
            return c.kernel(tok, st);
        });
}

/// Token-level surrogate over `token_pass` (see the file comment). All inputs `[B, T]`;
/// `old_logp` is not read (not even its shape) when `Kernel::reads_old_logp` is false.
template <class Kernel, class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> run_tokens(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const typename Kernel::Options& opts, const Normalizer& norm,
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out,
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights) {
    using S = ::rlpo::detail::scalar_t<DL>;
    SurrogateCall<S, Kernel> c(logp, old_logp, advantages, mask, opts, norm, out, is_weights,
                               false);
    const auto pass = token_sums(c);
    c.kernel.report(c.res.metrics, pass.stats, pass.count);
    return c.finish(pass.value);
}

/// The SIMD token pass of `run_tokens_simd` over the call's views: a template on the kernel
/// and the scalar only, so that every combination of the callers' input expression types
/// (`Mat`, `Map`, a constant, …) shares one copy of the pass, the costliest code of a
/// surrogate to compile.
template <class S, class Kern>
::rlpo::detail::TokenPassResult<Kern::stats> token_sums_simd(const SurrogateCall<S, Kern>& c) {
    using P = ::rlpo::detail::simd::Packet<S>;
    using NI = ::rlpo::detail::NamedInput<S>;
    using Keep = ::rlpo::detail::simd::LaneMask<S>;
    constexpr std::size_t K = Kern::stats;
    const auto& lp = c.lp;
    const auto& olp = c.olp;
    const auto& A = c.A;
    ::rlpo::detail::TokenPassResult<K> pass;
    if (c.is_weights) {
        const ConstMatRef<S>& wm = *c.is_weights;
        pass = ::rlpo::detail::token_pass_simd<K, S>(
            c.fn, c.m, c.w, c.g,
            {NI{"logp", &lp}, NI{"old_logp", &olp}, NI{"advantages", &A}, NI{"is_weights", &wm}},
            [&](Index i, Index k, Index T, const Keep& keep, P& loss, P& grad,
                ::rlpo::detail::simd::Packets<S, K>& st) {
                c.kernel.template operator()<true>(lp, olp, A, wm.data() + i * wm.outerStride(), i,
                                                   k, T, keep, loss, grad, st);
            });
    } else {
        pass = ::rlpo::detail::token_pass_simd<K, S>(
            c.fn, c.m, c.w, c.g, {NI{"logp", &lp}, NI{"old_logp", &olp}, NI{"advantages", &A}},
            [&](Index i, Index k, Index T, const Keep& keep, P& loss, P& grad,
                ::rlpo::detail::simd::Packets<S, K>& st) {
                c.kernel.template operator()<false>(lp, olp, A, nullptr, i, k, T, keep, loss, grad,
                                                    st);
            });
    }
    return pass;
}

/// Token-level surrogate over `token_pass_simd` with the fast row factors. The kernel is a
/// template over S (`Kernel<S>`) whose call operator, a template over `bool Weighted`, takes
/// the views, the row of `is_weights` (null when unweighted) and the packet arguments:
/// `k.template operator()<Weighted>(lp, olp, A, wrow, i, k, T, keep, loss, grad, stats)`. The
/// weights are read per packet (no weighted copy of an input); the unweighted instantiation is
/// the kernel without them.
template <template <class> class Kernel, class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> run_tokens_simd(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const typename Kernel<::rlpo::detail::scalar_t<DL>>::Options& opts, const Normalizer& norm,
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out,
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    SurrogateCall<S, Kernel<S>> c(logp, old_logp, advantages, mask, opts, norm, out, is_weights,
                                  true);
    const auto pass = token_sums_simd(c);
    c.kernel.report(c.res.metrics, pass.stats, pass.count);
    return c.finish(pass.value);
}

}  // namespace rlpo::policy::detail
