#pragma once
/// \file
/// LibTorch adapter: rlpo's objectives over `at::Tensor`s, as views (no copy) and as
/// `torch::autograd::Function`s whose `backward()` puts rlpo's exact gradient into the
/// differentiable input's `.grad`. Optional: include it only where LibTorch is available
/// (CMake target `rlpo::torch`, made when `find_package(Torch)` succeeds; Debian
/// `libtorch-dev`). No other rlpo header includes it. The namespace is `rlpo::libtorch` (not
/// `rlpo::torch`, which would hide LibTorch's `torch::` under `using namespace rlpo`).
///
/// ```cpp
/// #include <rlpo/interop/torch.hpp>
/// at::Tensor logp = model_logp(...);                        // [B, T], requires_grad
/// at::Tensor loss = rlpo::libtorch::ppo_clip(logp, old_logp, adv, mask,
///                                            rlpo::policy::PPOClipOptions::verl());
/// loss = loss + 0.001 * rlpo::libtorch::kl_penalty(logp, ref_logp, mask);
/// loss.backward();                                          // logp.grad = rlpo's gradient
/// ```
///
/// **What a tensor must be.** CPU (host memory), strided and contiguous (row-major, as
/// `.contiguous()` makes it), 2-D (`[B, T]` token data, `[N, V]` logits; a distillation mask
/// may also be 1-D `[N]`: one row per sequence), of the dtype of the call's differentiable
/// input: float32 or float64 (token objectives), float32, float64 or bfloat16 (logits; a
/// bfloat16 call takes a float32 mask). Every input is read in place. Anything else is
/// `rlpo::invalid_argument` (a `std::invalid_argument`) naming the function, the argument and
/// what is wrong, e.g.
/// `rlpo::libtorch::ppo_clip(): old_logp: expected a CPU tensor, given one on cuda:0 (...)`,
/// `...: mask: must be contiguous (row-major, read in place): call .contiguous() first; given
/// sizes [4, 8] and strides [1, 4]`, `...: advantages: expected dtype Float (the dtype of
/// logp), given Double`, `...: logp: expected a 2-D tensor, given 3-D [2, 3, 4]`. Shape
/// mismatches and invalid options are the C++ objectives' own errors (same messages).
///
/// **Gradients.** Each wrapper returns a 0-d loss tensor (dtype of the differentiable input;
/// float32 for bfloat16 logits). Gradient flows to one input: `logp` for `policy_loss`,
/// `ppo_clip`, `kl_penalty` (∂loss/∂logp, exactly 0 where the mask is 0), the student logits
/// for the divergences (∂loss/∂z, the 1/τ included). It is computed in the forward pass, in the
/// same call as the value (only when that input requires grad), kept for backward and scaled
/// there by the upstream gradient; no gradient flows to the other inputs (old / reference
/// log-probs, advantages, teacher logits, masks are constants, as if detached). No double
/// backward. `metrics` (optional) receives the call's metrics (verl / TRL names).
///
/// **Views** (`view<S>`, `view_mut<S>`, `grad_out<S>`) give the same checks for calls that are
/// not wrapped here (any rlpo objective over `Eigen::Map`s of tensors, the training step).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/divergences.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/policy_loss.hpp>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <Eigen/Core>

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace rlpo::libtorch {

/// The at::ScalarType of a storage type S (float, double, Eigen::bfloat16).
template <class S>
inline constexpr at::ScalarType scalar_type() {
    if constexpr (std::is_same<S, float>::value) return at::kFloat;
    if constexpr (std::is_same<S, double>::value) return at::kDouble;
    static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value ||
                      std::is_same<S, Eigen::bfloat16>::value,
                  "rlpo::libtorch: tensors are float, double or Eigen::bfloat16 (at::kBFloat16)");
    return at::kBFloat16;
}

namespace detail {

static_assert(sizeof(Eigen::bfloat16) == sizeof(at::BFloat16),
              "rlpo::libtorch: Eigen::bfloat16 and at::BFloat16 share one 16-bit layout");

/// Device, layout, dtype, rank and contiguity of `t` (see the file comment). `dtype_of` names
/// the argument whose dtype is required (null: none). `allow_1d`: a 1-D tensor is `[n, 1]`.
inline void check_tensor(const char* fn, const char* name, const at::Tensor& t, at::ScalarType dt,
                         const char* dtype_of = nullptr, bool allow_1d = false) {
    RLPO_CHECK(t.defined(), fn, name, ": undefined tensor");
    RLPO_CHECK(t.device().is_cpu(), fn, name, ": expected a CPU tensor, given one on ", t.device(),
               " (rlpo reads host memory in place: move it with .cpu() first)");
    RLPO_CHECK(t.layout() == at::kStrided, fn, name, ": expected a dense (strided) tensor, given ",
               t.layout(), " layout");
    if (t.scalar_type() != dt)
        ::rlpo::detail::fail(fn, name, ": expected dtype ", dt,
                             dtype_of ? std::string(" (the dtype of ") + dtype_of + ")" : "",
                             ", given ", t.scalar_type());
    RLPO_CHECK(t.dim() == 2 || (allow_1d && t.dim() == 1), fn, name, ": expected a ",
               allow_1d ? "1-D or 2-D" : "2-D", " tensor, given ", t.dim(), "-D ", t.sizes());
    RLPO_CHECK(t.is_contiguous(), fn, name,
               ": must be contiguous (row-major, read in place): call .contiguous() first; "
               "given sizes ",
               t.sizes(), " and strides ", t.strides());
}

inline Index rows_of(const at::Tensor& t) { return static_cast<Index>(t.size(0)); }
inline Index cols_of(const at::Tensor& t) {
    return t.dim() == 2 ? static_cast<Index>(t.size(1)) : 1;
}

}  // namespace detail

/// A read-only `[rows, cols]` view of a CPU, contiguous, 2-D tensor of dtype S (1-D with
/// `allow_1d`: `[n, 1]`), checked as the file comment says; `fn` and `name` name the call and
/// the argument in the error. The tensor must outlive the view.
template <class S>
inline ConstMatMap<S> view(const at::Tensor& t, const char* name = "tensor",
                           const char* fn = "libtorch::view", bool allow_1d = false) {
    detail::check_tensor(fn, name, t, scalar_type<S>(), nullptr, allow_1d);
    return ConstMatMap<S>(static_cast<const S*>(t.data_ptr()), detail::rows_of(t),
                          detail::cols_of(t));
}

/// A writable view of a tensor (same checks as `view`), e.g. a gradient buffer.
template <class S>
inline MatMap<S> view_mut(const at::Tensor& t, const char* name = "tensor",
                          const char* fn = "libtorch::view_mut") {
    detail::check_tensor(fn, name, t, scalar_type<S>());
    return MatMap<S>(static_cast<S*>(t.data_ptr()), detail::rows_of(t), detail::cols_of(t));
}

/// A `GradientOut` over a tensor: overwrite it (`add` false) or add into it, times `coef`.
template <class S>
inline GradientOut<S> grad_out(const at::Tensor& t, bool add = false, double coef = 1.0,
                               const char* name = "grad", const char* fn = "libtorch::grad_out") {
    detail::check_tensor(fn, name, t, scalar_type<S>());
    const Index r = detail::rows_of(t), c = detail::cols_of(t);
    return GradientOut<S>{
        add ? GradMode::Add : GradMode::Write, static_cast<S*>(t.data_ptr()), r, c, c, coef};
}

namespace detail {

/// Computes an objective: writes its gradient into `grad` when `grad` is defined (a tensor of
/// the differentiable input's shape and dtype), fills the metrics, returns the value.
using Kernel = std::function<double(const at::Tensor& grad, Metrics& metrics)>;

/// The one autograd Function behind every wrapper: forward computes value and gradient in one
/// call, backward scales the saved gradient by the upstream gradient.
class ObjectiveFunction : public ::torch::autograd::Function<ObjectiveFunction> {
public:
    static at::Tensor forward(::torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                              const Kernel* kernel, Metrics* metrics, bool need_grad,
                              at::ScalarType value_dtype) {
        at::Tensor g;
        if (need_grad) g = at::empty_like(x, at::MemoryFormat::Contiguous);
        Metrics m;
        const double value = (*kernel)(g, m);
        if (metrics) *metrics = std::move(m);
        if (need_grad) ctx->save_for_backward({g});
        return at::scalar_tensor(value, at::TensorOptions().dtype(value_dtype));
    }
    static ::torch::autograd::variable_list backward(::torch::autograd::AutogradContext* ctx,
                                                     ::torch::autograd::variable_list grad_out) {
        const auto saved = ctx->get_saved_variables();
        at::Tensor gx;
        if (!saved.empty()) gx = saved[0] * grad_out[0].to(saved[0].scalar_type());
        // one entry per forward argument: x, then the four non-tensor arguments
        return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
};

inline at::Tensor apply(const at::Tensor& x, const Kernel& kernel, Metrics* metrics,
                        at::ScalarType value_dtype) {
    const bool need = x.requires_grad() && at::GradMode::is_enabled();
    return ObjectiveFunction::apply(x, &kernel, metrics, need, value_dtype);
}

template <class S>
inline GradientOut<S> sink(const at::Tensor& g) {
    if (!g.defined()) return no_grad<S>();
    const Index r = rows_of(g), c = cols_of(g);
    return GradientOut<S>{GradMode::Write, static_cast<S*>(g.data_ptr()), r, c, c, 1.0};
}

template <class S>
inline ConstMatMap<S> map_of(const at::Tensor& t) {
    return ConstMatMap<S>(static_cast<const S*>(t.data_ptr()), rows_of(t), cols_of(t));
}

template <class S, std::size_t K, std::size_t... I>
inline std::array<ConstMatMap<S>, K> maps(const std::array<const at::Tensor*, K>& ts,
                                          std::index_sequence<I...>) {
    return {{map_of<S>(*ts[I])...}};
}

/// A token objective over `[B, T]` inputs (logp first): dispatches on logp's dtype (float32 /
/// float64), checks and views every input, and runs `f(views, out)` → Result.
template <std::size_t K, class F>
inline at::Tensor token_objective(const char* fn, const std::array<const char*, K>& names,
                                  const std::array<const at::Tensor*, K>& ts, Metrics* metrics,
                                  F&& f) {
    const at::Tensor& x = *ts[0];
    auto run = [&](auto tag) {
        using S = decltype(tag);
        for (std::size_t k = 0; k < K; ++k)
            check_tensor(fn, names[k], *ts[k], scalar_type<S>(), k == 0 ? nullptr : names[0]);
        const std::array<ConstMatMap<S>, K> v = maps<S>(ts, std::make_index_sequence<K>{});
        const Kernel kernel = [&](const at::Tensor& g, Metrics& m) {
            Result<S> r = f(v, sink<S>(g));
            m = std::move(r.metrics);
            return r.value;
        };
        return apply(x, kernel, metrics, scalar_type<S>());
    };
    RLPO_CHECK(x.defined(), fn, names[0], ": undefined tensor");
    if (x.scalar_type() == at::kFloat) return run(float{});
    if (x.scalar_type() == at::kDouble) return run(double{});
    ::rlpo::detail::fail(fn, names[0], ": expected dtype Float or Double, given ", x.scalar_type());
}

}  // namespace detail

/// Any policy-gradient surrogate of rlpo's registry (`policy::policy_loss`), options as
/// `policy::make_policy_loss(name, anchor)` gives them or set by hand. Inputs `[B, T]`;
/// gradient to `logp`.
inline at::Tensor policy_loss(const policy::PolicyLossOptions& opts, const at::Tensor& logp,
                              const at::Tensor& old_logp, const at::Tensor& advantages,
                              const at::Tensor& mask, const Normalizer& norm = {},
                              Metrics* metrics = nullptr) {
    return detail::token_objective<4>(
        "libtorch::policy_loss", {"logp", "old_logp", "advantages", "mask"},
        {&logp, &old_logp, &advantages, &mask}, metrics, [&](const auto& v, const auto& out) {
            return policy::policy_loss(opts, v[0], v[1], v[2], v[3], norm, out);
        });
}

/// The surrogate named as verl / TRL name it (`"vanilla"`, `"gspo"`, `"dapo"`, …) with the
/// anchor's preset (`policy::make_policy_loss(name, anchor)`); unknown names are
/// rlpo::invalid_argument. Gradient to `logp`.
inline at::Tensor policy_loss(const std::string& name, const at::Tensor& logp,
                              const at::Tensor& old_logp, const at::Tensor& advantages,
                              const at::Tensor& mask, policy::Anchor anchor = policy::Anchor::Verl,
                              const Normalizer& norm = {}, Metrics* metrics = nullptr) {
    return policy_loss(policy::make_policy_loss(name, anchor), logp, old_logp, advantages, mask,
                       norm, metrics);
}

/// PPO clip (`policy::ppo_clip`; presets `PPOClipOptions::verl()`, `trl()`, `openrlhf()`,
/// `dapo()`, …). Inputs `[B, T]`; gradient to `logp`.
inline at::Tensor ppo_clip(const at::Tensor& logp, const at::Tensor& old_logp,
                           const at::Tensor& advantages, const at::Tensor& mask,
                           const policy::PPOClipOptions& opts = {}, const Normalizer& norm = {},
                           Metrics* metrics = nullptr) {
    return detail::token_objective<4>(
        "libtorch::ppo_clip", {"logp", "old_logp", "advantages", "mask"},
        {&logp, &old_logp, &advantages, &mask}, metrics, [&](const auto& v, const auto& out) {
            return policy::ppo_clip(v[0], v[1], v[2], v[3], opts, norm, out);
        });
}

/// Token-level KL penalty of `logp` against `ref_logp` (`penalties::kl_penalty`: k1, k2, k3,
/// low_var_kl, … by `KLOptions::estimator`; presets `KLOptions::verl()`, `trl()`). Inputs
/// `[B, T]`; gradient to `logp`.
inline at::Tensor kl_penalty(const at::Tensor& logp, const at::Tensor& ref_logp,
                             const at::Tensor& mask, const penalties::KLOptions& opts = {},
                             const Normalizer& norm = {}, Metrics* metrics = nullptr) {
    return detail::token_objective<3>(
        "libtorch::kl_penalty", {"logp", "ref_logp", "mask"}, {&logp, &ref_logp, &mask}, metrics,
        [&](const auto& v, const auto& out) {
            return penalties::kl_penalty(v[0], v[1], v[2], opts, norm, out);
        });
}

/// Importance-corrected KL penalty (`penalties::kl_penalty_corrected`, TRL
/// `use_bias_correction_kl`). Inputs `[B, T]`; gradient to `logp`.
inline at::Tensor kl_penalty_corrected(const at::Tensor& logp, const at::Tensor& old_logp,
                                       const at::Tensor& ref_logp, const at::Tensor& mask,
                                       const penalties::KLOptions& opts = {},
                                       const Normalizer& norm = {}, Metrics* metrics = nullptr) {
    return detail::token_objective<4>(
        "libtorch::kl_penalty_corrected", {"logp", "old_logp", "ref_logp", "mask"},
        {&logp, &old_logp, &ref_logp, &mask}, metrics, [&](const auto& v, const auto& out) {
            return penalties::kl_penalty_corrected(v[0], v[1], v[2], v[3], opts, norm, out);
        });
}

namespace detail {

template <class S, class M>
inline at::Tensor divergence_as(const char* fn, const at::Tensor& z, const at::Tensor& y,
                                const at::Tensor& mask, const distill::DistillOptions& opts,
                                const Normalizer& norm, Metrics* metrics,
                                at::ScalarType value_dtype) {
    check_tensor(fn, "student_logits", z, scalar_type<S>());
    check_tensor(fn, "teacher_logits", y, scalar_type<S>(), "student_logits");
    const ConstMatMap<S> zv = map_of<S>(z), yv = map_of<S>(y);
    Mat<M> ones;
    std::optional<ConstMatMap<M>> mv;
    if (mask.defined()) {
        check_tensor(fn, "mask", mask, scalar_type<M>(),
                     std::is_same<S, M>::value ? "student_logits" : nullptr, true);
        mv.emplace(map_of<M>(mask));
    } else {
        ones = Mat<M>::Ones(zv.rows(), 1);
        mv.emplace(ones.data(), ones.rows(), 1);
    }
    const Kernel kernel = [&](const at::Tensor& g, Metrics& m) {
        Result<S> r = distill::divergence(zv, yv, *mv, opts, norm, sink<S>(g));
        m = std::move(r.metrics);
        return r.value;
    };
    return apply(z, kernel, metrics, value_dtype);
}

}  // namespace detail

/// Distillation divergence between teacher and student logits (`distill::divergence`: the
/// kind is `opts.divergence`; temperature, β / α as there). `student_logits`, `teacher_logits`:
/// `[N, V]`, same dtype (float32, float64 or bfloat16); `mask`: `[B, T]` with B·T = N (or
/// `[N]`; undefined: every row, token-mean), the logits' dtype (float32 for bfloat16 logits).
/// Gradient to the student logits.
inline at::Tensor divergence(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                             const at::Tensor& mask = {}, const distill::DistillOptions& opts = {},
                             const Normalizer& norm = {}, Metrics* metrics = nullptr) {
    constexpr const char* fn = "libtorch::divergence";
    RLPO_CHECK(student_logits.defined(), fn, "student_logits: undefined tensor");
    switch (student_logits.scalar_type()) {
        case at::kFloat:
            return detail::divergence_as<float, float>(fn, student_logits, teacher_logits, mask,
                                                       opts, norm, metrics, at::kFloat);
        case at::kDouble:
            return detail::divergence_as<double, double>(fn, student_logits, teacher_logits, mask,
                                                         opts, norm, metrics, at::kDouble);
        case at::kBFloat16:
            return detail::divergence_as<Eigen::bfloat16, float>(
                fn, student_logits, teacher_logits, mask, opts, norm, metrics, at::kFloat);
        default:
            ::rlpo::detail::fail(fn,
                                 "student_logits: expected dtype Float, Double or BFloat16, given ",
                                 student_logits.scalar_type());
    }
}

#define RLPO_LIBTORCH_DIVERGENCE(NAME, KIND)                                                   \
    inline at::Tensor NAME(const at::Tensor& student_logits, const at::Tensor& teacher_logits, \
                           const at::Tensor& mask = {}, distill::DistillOptions opts = {},     \
                           const Normalizer& norm = {}, Metrics* metrics = nullptr) {          \
        opts.divergence = KIND;                                                                \
        return divergence(student_logits, teacher_logits, mask, opts, norm, metrics);          \
    }

/// Named shorthands: `forward_kl(z, y, mask, opts, norm)` = `divergence` with that kind.
RLPO_LIBTORCH_DIVERGENCE(forward_kl, distill::Divergence::ForwardKL)
RLPO_LIBTORCH_DIVERGENCE(reverse_kl, distill::Divergence::ReverseKL)
RLPO_LIBTORCH_DIVERGENCE(jsd, distill::Divergence::JSD)
RLPO_LIBTORCH_DIVERGENCE(skew_kl, distill::Divergence::SkewKL)
RLPO_LIBTORCH_DIVERGENCE(skew_reverse_kl, distill::Divergence::SkewReverseKL)
RLPO_LIBTORCH_DIVERGENCE(tvd, distill::Divergence::TVD)
RLPO_LIBTORCH_DIVERGENCE(chi2, distill::Divergence::ChiSquared)
#undef RLPO_LIBTORCH_DIVERGENCE

}  // namespace rlpo::libtorch
