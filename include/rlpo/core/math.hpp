#pragma once
/// \file
/// Numerically stable primitives and their vector-Jacobian products (VJPs).
///
/// Scalar functions (softplus, log-sigmoid, log1mexp, sigmoid) never overflow and keep full
/// relative precision in their tails. Row-wise functions (logsumexp, log-softmax, softmax,
/// entropy of logits) read each row once with an *online* blocked logsumexp: the row is walked
/// in chunks of `kChunk` entries that stay in L1; each chunk's max and sum of exponentials are
/// computed with vectorised Eigen array code, and the running sum is rescaled when the max
/// grows. A row of −inf entries has logsumexp −inf; an empty row (V = 0) also gives −inf.
///
/// VJP conventions: `*_vjp(…, g)` returns (or writes) `J^T g`, the gradient of `⟨g, f(z)⟩`
/// with respect to z.

#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace rlpo {

// ---------------------------------------------------------------------------------------------
// Scalar functions
// ---------------------------------------------------------------------------------------------

/// softplus(x) = log(1 + e^x), computed as max(x, 0) + log1p(e^{−|x|}). d/dx = sigmoid(x).
template <class S>
inline S softplus(S x) {
    using std::abs;
    using std::exp;
    using std::log1p;
    if (std::isinf(x)) return x > 0 ? x : S(0);
    return std::max(x, S(0)) + log1p(exp(-abs(x)));
}

/// sigmoid(x) = 1 / (1 + e^{−x}), evaluated without overflow for either sign.
template <class S>
inline S sigmoid(S x) {
    using std::exp;
    if (x >= 0) return S(1) / (S(1) + exp(-x));
    const S e = exp(x);
    return e / (S(1) + e);
}

/// log σ(x) = −softplus(−x). d/dx = σ(−x) = 1 − σ(x).
template <class S>
inline S log_sigmoid(S x) {
    return -softplus(-x);
}

/// log(1 − e^x) for x ≤ 0 (Mächler's split at −log 2). log1mexp(0) = −inf; x > 0 gives NaN.
/// d/dx = −e^x / (1 − e^x) = −1 / expm1(−x).
template <class S>
inline S log1mexp(S x) {
    using std::exp;
    using std::expm1;
    using std::log;
    using std::log1p;
    const S ln2 = S(0.693147180559945309417232121458176568);
    return x > -ln2 ? log(-expm1(x)) : log1p(-exp(x));
}

/// Derivative of log1mexp at x < 0.
template <class S>
inline S log1mexp_grad(S x) {
    using std::expm1;
    return S(-1) / expm1(-x);
}

// ---------------------------------------------------------------------------------------------
// Row-wise functions over contiguous rows
// ---------------------------------------------------------------------------------------------

namespace detail {

/// Chunk length of the online logsumexp: 1 KiB of floats, small enough for L1, long enough to
/// vectorise.
inline constexpr Index kChunk = 256;

/// Running state of an online logsumexp: lse = max + log(sum).
struct OnlineLse {
    double max = -std::numeric_limits<double>::infinity();
    double sum = 0.0;

    /// Merge `n` contiguous entries.
    template <class S>
    void add(const S* x, Index n) {
        using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
        for (Index b = 0; b < n; b += kChunk) {
            if (std::isnan(max)) return;  // NaN is sticky
            const Index len = std::min(kChunk, n - b);
            const Eigen::Map<const Arr> chunk(x + b, len);
            const double cmax = static_cast<double>(chunk.template maxCoeff<Eigen::PropagateNaN>());
            if (cmax == -std::numeric_limits<double>::infinity()) continue;
            if (!(cmax <= max)) {  // also true when cmax is NaN or +inf
                sum = (max == -std::numeric_limits<double>::infinity())
                          ? 0.0
                          : sum * std::exp(max - cmax);
                max = cmax;
            }
            if (std::isinf(max) || std::isnan(max)) {
                sum = 1.0;
                continue;
            }
            sum += static_cast<double>((chunk - static_cast<S>(max)).exp().sum());
        }
    }

    /// Merge another state (used by parallel reductions).
    void merge(const OnlineLse& o) {
        if (o.max == -std::numeric_limits<double>::infinity()) return;
        if (max == -std::numeric_limits<double>::infinity()) {
            *this = o;
            return;
        }
        if (o.max > max) {
            sum = sum * std::exp(max - o.max) + o.sum;
            max = o.max;
        } else {
            sum += o.sum * std::exp(o.max - max);
        }
    }

    double value() const {
        if (max == -std::numeric_limits<double>::infinity()) return max;
        if (std::isinf(max) || std::isnan(max)) return max;
        return max + std::log(sum);
    }
};

}  // namespace detail

/// logsumexp of one contiguous row of n entries, one online pass.
template <class S>
inline double logsumexp(const S* row, Index n) {
    detail::OnlineLse acc;
    acc.add(row, n);
    return acc.value();
}

/// Row-wise logsumexp of `[N, V]` logits, one online pass per row. Returns N values.
template <class Derived>
inline Vec<detail::scalar_t<Derived>> logsumexp_rows(const Eigen::MatrixBase<Derived>& z) {
    using S = detail::scalar_t<Derived>;
    const ConstMatRef<S> zr(z.derived());
    Vec<S> out(zr.rows());
    for (Index i = 0; i < zr.rows(); ++i)
        out(i) = static_cast<S>(logsumexp(zr.row(i).data(), zr.cols()));
    return out;
}

/// Row-wise log-softmax: out = z − lse(z) per row. Entries equal to −inf stay −inf.
template <class Derived>
inline Mat<detail::scalar_t<Derived>> log_softmax_rows(const Eigen::MatrixBase<Derived>& z) {
    using S = detail::scalar_t<Derived>;
    const ConstMatRef<S> zr(z.derived());
    Mat<S> out(zr.rows(), zr.cols());
    for (Index i = 0; i < zr.rows(); ++i) {
        const S lse = static_cast<S>(logsumexp(zr.row(i).data(), zr.cols()));
        out.row(i) = zr.row(i).array() - lse;
    }
    return out;
}

/// Row-wise softmax. A row whose entries are all −inf has no distribution; it is returned as
/// zeros (documented degenerate case: no mass, no gradient).
template <class Derived>
inline Mat<detail::scalar_t<Derived>> softmax_rows(const Eigen::MatrixBase<Derived>& z) {
    using S = detail::scalar_t<Derived>;
    const ConstMatRef<S> zr(z.derived());
    Mat<S> out(zr.rows(), zr.cols());
    for (Index i = 0; i < zr.rows(); ++i) {
        const double lse = logsumexp(zr.row(i).data(), zr.cols());
        if (lse == -std::numeric_limits<double>::infinity()) {
            out.row(i).setZero();
            continue;
        }
        // Eigen's vectorised exp clamps its argument (exp(−inf) would be ~1e−308): −inf
        // entries are set to exactly 0.
        out.row(i) = (zr.row(i).array() == -std::numeric_limits<S>::infinity())
                         .select(S(0), (zr.row(i).array() - static_cast<S>(lse)).exp());
    }
    return out;
}

/// VJP of log-softmax: for y = log_softmax(z), ∂⟨g, y⟩/∂z = g − softmax(z)·Σ_j g_j.
template <class DZ, class DG>
inline Mat<detail::scalar_t<DZ>> log_softmax_vjp(const Eigen::MatrixBase<DZ>& z,
                                                 const Eigen::MatrixBase<DG>& g) {
    using S = detail::scalar_t<DZ>;
    Mat<S> p = softmax_rows(z);
    const ConstMatRef<S> gr(g.derived());
    for (Index i = 0; i < p.rows(); ++i) {
        const S gs = gr.row(i).sum();
        p.row(i) = gr.row(i) - p.row(i) * gs;
    }
    return p;
}

/// VJP of softmax: for p = softmax(z), ∂⟨g, p⟩/∂z = p ⊙ (g − ⟨g, p⟩).
template <class DZ, class DG>
inline Mat<detail::scalar_t<DZ>> softmax_vjp(const Eigen::MatrixBase<DZ>& z,
                                             const Eigen::MatrixBase<DG>& g) {
    using S = detail::scalar_t<DZ>;
    Mat<S> p = softmax_rows(z);
    const ConstMatRef<S> gr(g.derived());
    for (Index i = 0; i < p.rows(); ++i) {
        const S dot = p.row(i).dot(gr.row(i));
        p.row(i) = p.row(i).cwiseProduct((gr.row(i).array() - dot).matrix());
    }
    return p;
}

/// Entropy of the softmax of one row of logits, H = lse(z) − Σ_j p_j z_j, and optionally its
/// gradient ∂H/∂z_j = −p_j (z_j − Σ_k p_k z_k) = −p_j (log p_j + H) written to `grad` (scaled by
/// `scale`). Entries at −inf have p = 0 and contribute 0 to both. One online pass for lse,
/// one pass for Σ p z, one for the gradient.
template <class S>
inline double entropy_row(const S* z, Index n, S* grad = nullptr, double scale = 1.0) {
    const double lse = logsumexp(z, n);
    if (lse == -std::numeric_limits<double>::infinity()) {
        if (grad)
            for (Index j = 0; j < n; ++j) grad[j] = S(0);
        return 0.0;
    }
    double pz = 0.0;
    for (Index j = 0; j < n; ++j) {
        const double zj = static_cast<double>(z[j]);
        if (zj == -std::numeric_limits<double>::infinity()) continue;
        pz += std::exp(zj - lse) * zj;
    }
    const double h = lse - pz;
    if (grad) {
        for (Index j = 0; j < n; ++j) {
            const double zj = static_cast<double>(z[j]);
            if (zj == -std::numeric_limits<double>::infinity()) {
                grad[j] = S(0);
                continue;
            }
            grad[j] = static_cast<S>(-scale * std::exp(zj - lse) * (zj - pz));
        }
    }
    return h;
}

/// Row-wise entropy of logits `[N, V]` → N values.
template <class Derived>
inline Vec<detail::scalar_t<Derived>> entropy_rows(const Eigen::MatrixBase<Derived>& z) {
    using S = detail::scalar_t<Derived>;
    const ConstMatRef<S> zr(z.derived());
    Vec<S> out(zr.rows());
    for (Index i = 0; i < zr.rows(); ++i)
        out(i) = static_cast<S>(entropy_row(zr.row(i).data(), zr.cols()));
    return out;
}

/// VJP of the row-wise entropy: g_i · ∂H_i/∂z.
template <class DZ, class DG>
inline Mat<detail::scalar_t<DZ>> entropy_vjp(const Eigen::MatrixBase<DZ>& z,
                                             const Eigen::MatrixBase<DG>& g) {
    using S = detail::scalar_t<DZ>;
    const ConstMatRef<S> zr(z.derived());
    Mat<S> out(zr.rows(), zr.cols());
    for (Index i = 0; i < zr.rows(); ++i)
        entropy_row(zr.row(i).data(), zr.cols(), out.row(i).data(),
                    static_cast<double>(g.derived()(i)));
    return out;
}

}  // namespace rlpo
