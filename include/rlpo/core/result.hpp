#pragma once
/// \file
/// What every objective returns, and where it writes its gradient.
///
/// `Result<S>` carries the loss value (accumulated in double), the gradient with respect to
/// the objective's differentiable input (same shape as that input; exactly 0 where the mask
/// is 0) and the metrics. By default the gradient is allocated in the result. A trainer that
/// owns its gradient buffer passes a `GradientOut<S>` as the last argument instead:
///
/// ```cpp
/// rlpo::Mat<float> g(B, T);
/// auto r = rlpo::policy::ppo_clip(logp, old_logp, adv, mask, {}, {}, rlpo::write_to(g));
/// // r.grad is empty; g holds ∂loss/∂logp.
/// rlpo::penalties::kl_penalty(logp, ref, mask, kl, {}, rlpo::add_to(g, 0.001));
/// // g += 0.001 · ∂kl/∂logp  — how the training step composes terms without temporaries.
/// ```

#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/core/types.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace rlpo {

/// Value, gradient and metrics of one objective call.
template <class S>
struct Result {
    double value = 0.0;  ///< the aggregated loss (scaled by GradientOut::coef when given)
    Mat<S> grad;         ///< ∂value/∂input; empty when the gradient went to a GradientOut
    Metrics metrics;     ///< named scalars (see each objective's doc comment)
};

namespace detail {

/// The last check of every objective: its value and each metric must be finite, else
/// `rlpo::numerical_error` naming the quantity (docs/contract.md, section 5). Costs one pass
/// over a handful of scalars; the per-position checks of the gradient live in the passes that
/// write it.
inline void check_finite_result(const char* function, double value, const Metrics& metrics) {
    if (!std::isfinite(value))
        fail_numerical(function, "value: the loss is not finite (", value,
                       "); the inputs overflow the accumulation");
    for (const auto& e : metrics)
        if (!std::isfinite(e.second.value()))
            fail_numerical(function, "metric '", e.first, "' is not finite (", e.second.value(),
                           ")");
}

}  // namespace detail

/// Where the gradient goes.
enum class GradMode {
    Own,    ///< allocate it in Result::grad (default)
    Write,  ///< overwrite a caller's buffer (masked entries set to 0)
    Add,    ///< add into a caller's buffer (masked entries untouched)
    None    ///< value and metrics only
};

/// A caller-owned gradient destination (row-major, the input's shape), with a coefficient
/// that scales both the gradient and the returned value.
template <class S>
struct GradientOut {
    GradMode mode = GradMode::Own;
    S* data = nullptr;
    Index rows = 0;
    Index cols = 0;
    Index stride = 0;  ///< distance between rows in elements (≥ cols)
    double coef = 1.0;
};

/// Overwrite `g` with the gradient (times `coef`).
template <class S>
inline GradientOut<S> write_to(MatRef<S> g, double coef = 1.0) {
    return GradientOut<S>{GradMode::Write, g.data(), g.rows(), g.cols(), g.outerStride(), coef};
}
template <class S>
inline GradientOut<S> write_to(Mat<S>& g, double coef = 1.0) {
    return write_to<S>(MatRef<S>(g), coef);
}
/// Add `coef` × the gradient into `g`.
template <class S>
inline GradientOut<S> add_to(MatRef<S> g, double coef = 1.0) {
    return GradientOut<S>{GradMode::Add, g.data(), g.rows(), g.cols(), g.outerStride(), coef};
}
template <class S>
inline GradientOut<S> add_to(Mat<S>& g, double coef = 1.0) {
    return add_to<S>(MatRef<S>(g), coef);
}
namespace detail {
/// Whether an Eigen destination has rlpo's gradient layout: row-major rows of contiguous
/// entries (a vector, whose layout is the same either way, included).
template <class G>
inline constexpr bool is_row_major_destination_v =
    (G::IsRowMajor || G::IsVectorAtCompileTime) && G::InnerStrideAtCompileTime == 1;
}  // namespace detail

/// Any other Eigen destination: row-major `Eigen::Map`s, `Ref`s and blocks (`write_to(
/// rlpo::view(ptr, rows, cols))`, no scalar to name). A column-major matrix (Eigen's default,
/// `Eigen::MatrixXf`) is rejected at compile time: rlpo writes `[rows, cols]` row by row.
template <class G, class D = std::decay_t<G>, class S = typename D::Scalar>
inline GradientOut<S> write_to(G&& g, double coef = 1.0) {
    static_assert(detail::is_row_major_destination_v<D>,
                  "rlpo::write_to / rlpo::add_to: the gradient destination must be row-major with "
                  "contiguous rows (rlpo::Mat<S>, or a row-major Eigen::Map / Ref / block); "
                  "Eigen::MatrixXf and other column-major matrices are not accepted");
    if constexpr (detail::is_row_major_destination_v<D>)
        return write_to<S>(MatRef<S>(g), coef);
    else
        return GradientOut<S>{};  // (not reached: the static_assert above is the one error)
}
template <class G, class D = std::decay_t<G>, class S = typename D::Scalar>
inline GradientOut<S> add_to(G&& g, double coef = 1.0) {
    static_assert(detail::is_row_major_destination_v<D>,
                  "rlpo::write_to / rlpo::add_to: the gradient destination must be row-major with "
                  "contiguous rows (rlpo::Mat<S>, or a row-major Eigen::Map / Ref / block); "
                  "Eigen::MatrixXf and other column-major matrices are not accepted");
    if constexpr (detail::is_row_major_destination_v<D>)
        return add_to<S>(MatRef<S>(g), coef);
    else
        return GradientOut<S>{};  // (not reached: the static_assert above is the one error)
}
/// Skip the gradient (value and metrics only).
template <class S>
inline GradientOut<S> no_grad() {
    return GradientOut<S>{GradMode::None, nullptr, 0, 0, 0, 1.0};
}

namespace detail {

/// One row of a gradient, as a `GradWriter` hands it to a row kernel (`GradWriter::row_view`;
/// the vocabulary divergences, top-k, TAID, NKD): where the row's entries go (overwritten or
/// added) and the row's factor `scale` (the GradientOut coefficient times the row's
/// aggregation weight). Inactive (null) when no gradient was asked for.
///   * `set(expr)` / `set(off, len, expr)` write scale · expr over Eigen array expressions;
///     overwritten float rows go through a 16-byte aligned chunk buffer and streaming stores
///     (no read-for-ownership of the gradient lines);
///   * `add_at(j, v)` adds scale · v to one entry (corrections after `set`);
///   * `from<P>(off)` is the packet view of the entries from `off` on: `packet(j, v)` and
///     `scalar(j, v)` store values the kernel has already scaled, streamed when the row is
///     overwritten, float and aligned for P, else stored or added (the addend rounded first:
///     core/simd/packet.hpp, `rounded`); other storage types are rounded entry by entry.
template <class S>
struct GradRow {
    S* dst = nullptr;
    Index V = 0;
    double scale = 0.0;
    bool add = false;
    bool stream = false;          ///< packet view: stream the packets (`from`)
    float* stream_buf = nullptr;  ///< 16-byte aligned chunk buffer for `set`'s streaming stores
    Index stream_len = 0;

    bool active() const { return dst != nullptr; }
    template <class E>
    void set(const E& expr) const {
        set(0, V, expr);
    }
    /// Add scale · v to entry j (after `set`: corrections at a few positions).
    void add_at(Index j, double v) const {
        if (!dst) return;
        dst[j] = static_cast<S>(static_cast<double>(dst[j]) + scale * v);
    }
    /// Entries [off, off + len) of the row: scale · expr.
    template <class E>
    void set(Index off, Index len, const E& expr) const {
        using A = typename E::Scalar;
        if (!dst) return;
        // Overwriting float rows: evaluate the chunk in L1, then stream it to memory with
        // non-temporal stores (no read-for-ownership of the gradient lines).
        if constexpr (simd::kStreamingStores && std::is_same<S, float>::value &&
                      std::is_same<A, float>::value) {
            if (!add && stream_buf && len <= stream_len &&
                (reinterpret_cast<std::uintptr_t>(dst + off) % 16) == 0) {
                Eigen::Map<Eigen::Array<A, Eigen::Dynamic, 1>> t(stream_buf, len);
                t = static_cast<A>(scale) * expr;
                simd::stream_floats(dst + off, stream_buf, len);
                return;
            }
        }
        Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>> d(dst + off, len);
        const A s = static_cast<A>(scale);
        if constexpr (std::is_same<S, A>::value) {
            if (add)
                d += s * expr;
            else
                d = s * expr;
        } else {
            if (add)
                d = (d.template cast<A>() + s * expr).template cast<S>();
            else
                d = (s * expr).template cast<S>();
        }
    }
    /// The packet view of the entries from `off` on (streamed when overwritten and aligned for
    /// packets P).
    template <class P>
    GradRow from(Index off) const {
        GradRow r = *this;
        r.dst = dst + off;
        r.stream = !add && reinterpret_cast<std::uintptr_t>(r.dst) % sizeof(P) == 0;
        return r;
    }
    /// Entries [j, j + width of P) get the (already scaled) packet v.
    template <class P>
    EIGEN_ALWAYS_INLINE void packet(Index j, const P& v) const {
        namespace ei = Eigen::internal;
        using A = typename ei::unpacket_traits<P>::type;
        if constexpr (simd::kStreamingStores && std::is_same<S, float>::value &&
                      std::is_same<A, float>::value) {
            if (stream) {
                simd::stream_packet(dst + j, v);
                return;
            }
        }
        if constexpr (std::is_same<S, A>::value) {
            if (add)
                ei::pstoreu(dst + j, ei::padd(ei::ploadu<P>(dst + j), simd::rounded(v)));
            else
                ei::pstoreu(dst + j, v);
        } else {
            constexpr Index W = ei::unpacket_traits<P>::size;
            alignas(64) A t[W];
            ei::pstore(t, v);
            for (Index i = 0; i < W; ++i) scalar(j + i, t[i]);
        }
    }
    /// Entry j gets the (already scaled) value v.
    template <class A>
    void scalar(Index j, A v) const {
        if (add)
            dst[j] = static_cast<S>(static_cast<A>(dst[j]) + simd::rounded(v));
        else
            dst[j] = static_cast<S>(v);
    }
};

/// Resolves a GradientOut against a Result: gives the buffer to write (or none) and applies
/// the coefficient. Objectives write through `put(i, j, g)` / `zero(i, j)`; `put` is given the
/// already aggregation-weighted gradient.
template <class S>
class GradWriter {
public:
    GradWriter(const char* function, Result<S>& res, const GradientOut<S>& out, Index rows,
               Index cols)
        : mode_(out.mode), coef_(out.coef) {
        check_finite_param(function, "GradientOut::coef", out.coef);
        switch (out.mode) {
            case GradMode::Own:
                res.grad.resize(rows, cols);
                data_ = res.grad.data();
                stride_ = cols;
                mode_ = GradMode::Write;
                break;
            case GradMode::Write:
            case GradMode::Add:
                RLPO_CHECK(out.data != nullptr || rows * cols == 0, function,
                           "GradientOut: null buffer");
                RLPO_CHECK(out.rows == rows && out.cols == cols, function,
                           "GradientOut: expected shape [", rows, ", ", cols, "], given [",
                           out.rows, ", ", out.cols, "]");
                RLPO_CHECK(out.stride >= cols, function, "GradientOut: stride ", out.stride,
                           " < cols ", cols);
                data_ = out.data;
                stride_ = out.stride;
                break;
            case GradMode::None: data_ = nullptr; break;
        }
    }
    bool active() const { return data_ != nullptr; }
    double coef() const { return coef_; }
    void put(Index i, Index j, double g) const {
        if (!data_) return;
        S& d = data_[i * stride_ + j];
        if (mode_ == GradMode::Add)
            d += static_cast<S>(coef_ * g);
        else
            d = static_cast<S>(coef_ * g);
    }
    void zero(Index i, Index j) const {
        if (data_ && mode_ == GradMode::Write) data_[i * stride_ + j] = S(0);
    }
    /// Pointer to row i (null when no gradient is wanted).
    S* row(Index i) const { return data_ ? data_ + i * stride_ : nullptr; }
    /// Row i (`cols` entries) as a row kernel writes it, with the row's factor coef · w ·
    /// `row_scale` (w: the row's aggregation weight); a kernel may attach a chunk buffer for
    /// streaming stores (`GradRow::stream_buf`).
    GradRow<S> row_view(Index i, Index cols, double w, double row_scale = 1.0) const {
        GradRow<S> r;
        r.dst = row(i);
        r.V = cols;
        r.scale = coef_ * w * row_scale;
        r.add = mode_ == GradMode::Add;
        return r;
    }
    S* data() const { return data_; }
    GradMode mode() const { return mode_; }

    /// Whether a row factor f (coef · the row's aggregation weight · an objective's scale) is
    /// large enough that the row's gradient may overflow S: |f| > max(S)·2⁻⁴⁰ (float 3.1e26,
    /// double 1.6e296), or f not finite. The margin 2⁴⁰ covers the per-entry terms of the
    /// vocabulary losses on their fast paths (≤ ~2²¹/τ with τ ≥ 1e−4 for rows whose every
    /// |logit/τ| is ≤ 2²⁰, hence whose spread over τ is ≤ 2²¹; other rows go to an exact path
    /// that checks its own output). Ordinary factors are ≤ 1 in magnitude; such a
    /// factor comes from a Normalizer count near 0 (num_tokens = 1e-300) or extreme mask weights.
    static bool factor_at_risk(double f) {
        return !(std::abs(f) <= static_cast<double>(std::numeric_limits<S>::max()) * 0x1p-40);
    }
    /// After row i (`cols` entries) was written under an at-risk factor f: a non-finite entry
    /// is rlpo::numerical_error naming the row, the column and the factor (the gradient's
    /// per-entry terms were finite; their product with f overflowed S). Called only for the
    /// rare at-risk rows, so ordinary calls never pay for the scan.
    void check_row_finite(const char* function, Index i, Index cols, double f) const {
        const Index j = first_nonfinite(i, cols);
        if (j >= 0)
            fail_numerical(function, "gradient: entry [", i, ", ", j, "] is not finite (",
                           static_cast<double>(row(i)[j]), ") under the row factor ", f,
                           " (GradientOut coefficient times the row's aggregation weight: "
                           "a Normalizer count near 0 or an extreme mask weight)");
    }
    /// The first column of row i holding a non-finite entry, or −1 (also without a gradient).
    Index first_nonfinite(Index i, Index cols) const {
        const S* r = row(i);
        if (r)
            for (Index j = 0; j < cols; ++j)
                if (!std::isfinite(static_cast<double>(r[j]))) return j;
        return -1;
    }

private:
    GradMode mode_;
    double coef_;
    S* data_ = nullptr;
    Index stride_ = 0;
};

}  // namespace detail
}  // namespace rlpo
