#pragma once
/// \file
/// The shared plumbing of element-wise token-level objectives (internal).
///
/// An objective supplies a functor `f(i, t, stats) -> LossGrad` for one unmasked token
/// returning the per-token loss L and ∂L/∂x of its
/// differentiable input, and adding its metric contributions (unweighted) to `stats`. The pass:
///   * skips masked tokens entirely (their inputs are never read, their gradient is exactly 0);
///   * weights by the aggregation factor c_i · m_it (see aggregation.hpp) and the
///     GradientOut coefficient, accumulates the value in double;
///   * processes rows in parallel when OpenMP is enabled, with per-row partial sums combined in
///     row order, so the result is bitwise identical for any number of threads;
///   * flags a NaN loss or gradient and then names the offending input and position.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <array>
#include <cmath>
#include <initializer_list>
#include <vector>

namespace rlpo::detail {

struct LossGrad {
    double loss;
    double grad;
};

/// A named `[B, T]` input, so that a NaN can be attributed.
template <class S>
struct NamedInput {
    const char* name;
    const ConstMatRef<S>* x;
};

template <std::size_t K>
struct TokenPassResult {
    double value = 0.0;           ///< Σ_i c_i Σ_t m L (before the GradientOut coefficient)
    std::array<double, K> stats{};  ///< Σ over unmasked tokens of m · (per-token stats)
    double count = 0.0;           ///< Σ m (local)
};

/// Diagnose a NaN produced at row-major index k: name a NaN input, else list the inputs'
/// values (a NaN that arose from ±inf inputs the formula cannot take).
template <class S>
[[noreturn]] inline void fail_nan_at(const char* function, Index i, Index t,
                                     std::initializer_list<NamedInput<S>> inputs) {
    for (const auto& in : inputs)
        if (std::isnan(static_cast<double>((*in.x)(i, t))))
            fail(function, in.name, ": NaN at [", i, ", ", t,
                 "] under a non-zero mask (NaN inputs are rejected)");
    std::ostringstream os;
    for (const auto& in : inputs) os << ' ' << in.name << '=' << (*in.x)(i, t);
    fail(function, "inputs at [", i, ", ", t, "] give an undefined (NaN) loss:", os.str());
}

template <std::size_t K, class S, class F>
inline TokenPassResult<K> token_pass(const char* function, const ConstMatRef<S>& mask,
                                     const RowWeights& w, const GradWriter<S>& g,
                                     std::initializer_list<NamedInput<S>> inputs, F&& f) {
    const Index B = mask.rows(), T = mask.cols();
    std::vector<double> row_value(static_cast<std::size_t>(B), 0.0);
    std::vector<std::array<double, K>> row_stats(static_cast<std::size_t>(B));
    std::vector<Index> row_nan(static_cast<std::size_t>(B), -1);
#if defined(RLPO_USE_OPENMP)
#pragma omp parallel for schedule(static) if (B * T > 32768)
#endif
    for (Index i = 0; i < B; ++i) {
        const auto r = static_cast<std::size_t>(i);
        const double c = w.c[r];
        double acc = 0.0;
        std::array<double, K> st{};
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(mask(i, t));
            if (mk == 0) {
                g.zero(i, t);
                continue;
            }
            std::array<double, K> local{};
            const LossGrad lg = f(i, t, local);
            if (std::isnan(lg.loss) || std::isnan(lg.grad)) {
                if (row_nan[r] < 0) row_nan[r] = t;
                continue;
            }
            acc += mk * lg.loss;
            for (std::size_t j = 0; j < K; ++j) st[j] += mk * local[j];
            g.put(i, t, c * mk * lg.grad);
        }
        row_value[r] = c * acc;
        row_stats[r] = st;
    }
    TokenPassResult<K> out;
    for (Index i = 0; i < B; ++i) {
        const auto r = static_cast<std::size_t>(i);
        if (row_nan[r] >= 0) fail_nan_at<S>(function, i, row_nan[r], inputs);
        out.value += row_value[r];
        for (std::size_t j = 0; j < K; ++j) out.stats[j] += row_stats[r][j];
    }
    out.count = w.local_tokens;
    return out;
}

}  // namespace rlpo::detail
