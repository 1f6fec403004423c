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
#include <rlpo/core/types.hpp>

namespace rlpo {

/// Value, gradient and metrics of one objective call.
template <class S>
struct Result {
    double value = 0.0;  ///< the aggregated loss (scaled by GradientOut::coef when given)
    Mat<S> grad;         ///< ∂value/∂input; empty when the gradient went to a GradientOut
    Metrics metrics;     ///< named scalars (see each objective's doc comment)
};

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
/// Skip the gradient (value and metrics only).
template <class S>
inline GradientOut<S> no_grad() {
    return GradientOut<S>{GradMode::None, nullptr, 0, 0, 0, 1.0};
}

namespace detail {

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
    S* data() const { return data_; }
    GradMode mode() const { return mode_; }

private:
    GradMode mode_;
    double coef_;
    S* data_ = nullptr;
    Index stride_ = 0;
};

}  // namespace detail
}  // namespace rlpo
