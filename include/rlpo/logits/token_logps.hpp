#pragma once
/// \file
/// Log-probabilities of the taken tokens from `[N, V]` logits, fused: the first step of every
/// GRPO / DPO / SFT loss (TRL's `selective_log_softmax`, verl's `logprobs_from_logits`).
///
/// Row n = b·T + t of the logits is position t of sequence b (the layout of a `[B, T, V]`
/// tensor); labels, mask and the outputs are `[B, T]`. With u = z/τ (τ the temperature):
///
///     logp_n = log softmax(u_n)[y_n] = u_{n,y} − logsumexp(u_n)
///     H_n    = −Σ_j p_nj log p_nj,   p_n = softmax(u_n)              (optional)
///
/// **Gradient** (the vector-Jacobian product for upstream g = ∂loss/∂logp and, optionally,
/// h = ∂loss/∂H, both `[B, T]`), w.r.t. the logits:
///
///     ∂loss/∂z_nj = (1/τ)·[ g_n (δ_{j,y_n} − p_nj) − h_n p_nj (u_nj − Σ_k p_nk u_nk) ]
///
/// written through the usual sink (`write_to`, `add_to`; the coefficient scales it). Rows
/// whose mask is 0 are never read (NaN allowed, labels not checked, e.g. −100): their logp and
/// H are 0 and their gradient is exactly 0 (`write_to`) or left untouched (`add_to`). A
/// non-zero mask entry only marks the row as valid: it does not weight anything (the loss's
/// weights are in g and h).
///
/// **Three calls.**
///   * `token_logps(logits, labels, mask, opts)` — forward only: logp (and H with
///     `opts.entropy`) plus what the backward needs per row (max, log-sum, mean shift);
///   * `token_logps_backward(logits, labels, mask, fwd, g[, h], out)` — the gradient from a
///     forward's saved rows: one more read of the logits and one write of the gradient. Its
///     `value` is coef·Σ_n (g_n logp_n + h_n H_n) (the linear functional whose gradient it is);
///   * `token_logps_vjp(logits, labels, mask, g[, h], opts, out)` — forward and backward in one
///     call when the upstream gradient is known in advance (SFT / NLL, REINFORCE-style weights,
///     a benchmark): each row is read once from memory and swept again while it is still in
///     the core's L2, so the memory traffic is one read of the logits and one write of the
///     gradient (8·N·V bytes for float).
///
/// **Method.** Per row, chunks of 2048 entries: the chunk maximum, then Σ e^{(z−m)/τ} (and Σ
/// e^{(z−m)/τ}(z − m) for H) in the arithmetic type, chunks merged online in double — one read of
/// the row, no `[N, V]` temporaries. The backward forms e^{(z−M)/τ}·(α + β (z − M)) per entry in an
/// L1 buffer and streams it out; the label's entry is computed in double, with 1 − p_y =
/// −expm1(logp) (as accurate as logp, no cancellation against p_y). Rows run in parallel (OpenMP,
/// blocks of rows taken by free threads); each row's arithmetic does not depend on the thread, so
/// results are bitwise identical for any thread count, and `token_logps_vjp` equals `token_logps` +
/// `token_logps_backward` bit for bit. Arithmetic is float (double for double logits); bfloat16
/// logits are widened per row and their gradient is rounded back to bfloat16. Accuracy: float sums
/// within a chunk, the exponential of core/simd/fast_math.hpp (≤ 1.4 ulp): about 1e−6 relative for
/// float, and ln S (S = 1 + the rest of the row) carries the sum's absolute rounding (~6e−8 in
/// float, as a float logsumexp does), so H of a nearly one-hot row is accurate to that absolutely.
///
/// **Defaults**: temperature 1 (TRL and verl divide the logits by the sampling temperature
/// before the log-softmax; pass it here instead), no entropy.
///
/// **Sources**: TRL `trl/trainer/utils.py` `selective_log_softmax` (logsumexp-based gather);
/// verl `verl/utils/torch_functional.py` `logprobs_from_logits`, `entropy_from_logits`.
///
/// **Bad input** (`rlpo::invalid_argument`, naming the input and position): logits rows ≠ B·T
/// of the mask; labels, g or h of another shape than the mask; temperature ≤ 0 or not
/// finite; a mask entry negative or not finite; in a row under a non-zero mask: a label
/// outside [0, V), a NaN or +inf logit, every logit −inf, the label's logit −inf (its log-prob
/// is −inf), a NaN or infinite g or h; `token_logps_backward` with h from a forward computed
/// without the entropy, or with a forward of another shape. −inf logits elsewhere are zero
/// probabilities (gradient exactly 0). The coefficient of the sink must be finite.

#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/arch/avx512.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/logits/detail/row_sweeps.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace rlpo::logits {

/// Options of `token_logps` and `token_logps_vjp`.
struct TokenLogpsOptions {
    double temperature = 1.0;  ///< τ > 0: log softmax(z/τ)
    bool entropy = false;      ///< also compute H per token (the `entropy` output and metric)
};

/// Storage types accepted for logits: float, double and Eigen::bfloat16.
template <class S>
inline constexpr bool is_logit_scalar_v =
    std::is_same<S, float>::value || std::is_same<S, double>::value ||
    std::is_same<S, Eigen::bfloat16>::value;

/// Arithmetic type: double for double logits, float otherwise.
template <class S>
using arith_t = std::conditional_t<std::is_same<S, double>::value, double, float>;

/// Outputs of the forward (and of `token_logps_vjp`). `[B, T]` each; 0 at masked positions.
template <class S>
struct TokenLogps {
    using A = arith_t<S>;
    Mat<A> logp;             ///< log softmax(z/τ)[label]
    Mat<A> entropy;          ///< H per token (empty unless requested)
    Mat<double> row_max;     ///< saved: M = max_j z_j
    Mat<double> log_sum;     ///< saved: ln Σ_j e^{(z_j − M)/τ}
    Mat<double> mean_shift;  ///< saved with the entropy: Σ_j p_j (z_j − M)/τ
    double temperature = 1.0;
    double value = 0.0;  ///< `token_logps_vjp`: coef·Σ (g logp + h H); else 0
    Mat<S> grad;         ///< `token_logps_vjp` with the default sink: ∂value/∂logits
    Metrics metrics;     ///< `entropy` (mean over unmasked tokens) when computed
};

namespace detail {

using ::rlpo::detail::fail;

/// The checked inputs of one call.
template <class S>
struct Inputs {
    ConstMatRef<S> z;
    Index B = 0, T = 0, N = 0, V = 0;
    std::vector<std::int64_t> label;
    std::vector<unsigned char> active;
    std::vector<double> g, h;  ///< upstream gradients (empty: none)
    double count = 0.0;        ///< unmasked rows

    template <class DZ, class DL, class DM>
    Inputs(const char* fn, const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
           const Eigen::MatrixBase<DM>& mask)
        : z(logits.derived()) {
        static_assert(std::is_integral<::rlpo::detail::scalar_t<DL>>::value,
                      "rlpo::logits: labels must have an integer scalar type");
        const auto& m = mask.derived();
        const auto& l = labels.derived();
        B = m.rows();
        T = m.cols();
        N = z.rows();
        V = z.cols();
        RLPO_CHECK(N == B * T, fn, "logits: expected ", B * T, " rows (B·T of mask [", B, ", ", T,
                   "]), given ", N);
        ::rlpo::detail::check_same_shape(fn, "labels", l, "mask", m);
        ::rlpo::detail::check_mask(fn, m);
        label.resize(static_cast<std::size_t>(N));
        active.resize(static_cast<std::size_t>(N));
        for (Index b = 0; b < B; ++b)
            for (Index t = 0; t < T; ++t) {
                const auto k = static_cast<std::size_t>(b * T + t);
                active[k] = static_cast<double>(m(b, t)) != 0.0 ? 1 : 0;
                label[k] = static_cast<std::int64_t>(l(b, t));
                if (!active[k]) continue;
                count += 1.0;
                RLPO_CHECK(label[k] >= 0 && label[k] < static_cast<std::int64_t>(V), fn,
                           "labels: ", label[k], " at [", b, ", ", t, "] is outside [0, ", V,
                           ") (row under a non-zero mask)");
            }
    }

    /// Read an upstream gradient (`[B, T]`, finite under the mask) into `dst`.
    template <class DG>
    void upstream(const char* fn, const char* name, const Eigen::MatrixBase<DG>& x,
                  std::vector<double>& dst) {
        const auto& v = x.derived();
        RLPO_CHECK(v.rows() == B && v.cols() == T, fn, name, ": expected shape [", B, ", ", T,
                   "] (same as mask), given [", v.rows(), ", ", v.cols(), "]");
        dst.assign(static_cast<std::size_t>(N), 0.0);
        for (Index b = 0; b < B; ++b)
            for (Index t = 0; t < T; ++t) {
                const auto k = static_cast<std::size_t>(b * T + t);
                if (!active[k]) continue;
                dst[k] = static_cast<double>(v(b, t));
                RLPO_CHECK(std::isfinite(dst[k]), fn, name, ": ", dst[k], " at [", b, ", ", t,
                           "] under a non-zero mask (must be finite)");
            }
    }
};

enum class Pass { Forward, Backward, Vjp };

/// Per-row results of the sweeps (filled in parallel, one entry per row).
struct RowResults {
    struct Err {
        const char* what = nullptr;
        Index col = -1;
        bool overflow = false;  ///< a gradient overflow (numerical_error), not an input error
    };
    std::vector<RowStats> st;
    std::vector<double> lp, ent;
    std::vector<Err> err;
    explicit RowResults(Index N)
        : st(static_cast<std::size_t>(N)),
          lp(static_cast<std::size_t>(N), 0.0),
          ent(static_cast<std::size_t>(N), 0.0),
          err(static_cast<std::size_t>(N)) {}
};

/// The sweeps of every row, rows in parallel (blocks of consecutive rows, each taken by
/// whichever thread is free).
/// `FEnt`: the forward sums the entropy's terms; `BEnt`: the backward has an entropy upstream.
/// In the fused pass a row's backward sweep follows its forward sweep at once, while the row
/// is still in the core's L2 (a two-row pipeline that overlapped the forward of row n with the
/// backward of row n − 1 chunk by chunk was measured slower, see docs/logits.md). A row's
/// arithmetic is the same chunk steps in the same order in every pass, so results do not
/// depend on the pass or the thread.
template <class S, bool FEnt, bool BEnt>
void sweep_rows(const Inputs<S>& in, double tau, Pass pass, const TokenLogps<S>* saved,
                const ::rlpo::detail::GradWriter<S>& gw, RowResults& r) {
    using A = arith_t<S>;
    using Back = BackwardSweep<A, BEnt, S>;
    const Index N = in.N, V = in.V;
    const bool grad = gw.active() && pass != Pass::Forward;
    const bool add = gw.mode() == GradMode::Add;
    const double inv_t = 1.0 / tau;
    const auto zero_row = [&](Index n) {
        if (grad && !add) std::fill(gw.row(n), gw.row(n) + V, S(0));
    };
    // after a row's forward statistics: its outputs, errors, and its backward sweep
    const auto prepare = [&](Index n, const A* x, const RowStats& s, Back& b) {
        const auto k = static_cast<std::size_t>(n);
        if (!s.ok) {
            r.err[k].what = classify_row<A>(x, V, r.err[k].col);
            return false;
        }
        r.st[k] = s;
        const Index y = static_cast<Index>(in.label[k]);
        const double zy = static_cast<double>(x[y]);
        if (zy == -std::numeric_limits<double>::infinity()) {
            r.err[k] = {"the label's logit is -inf (its log-prob is -inf)", y};
            return false;
        }
        const double lp = (zy - s.max) * inv_t - s.log_sum;
        r.lp[k] = lp;
        r.ent[k] = s.log_sum - s.mean_shift;
        if (!grad) return false;
        // ∂/∂z_j = −(c/τ) p_j (g − h·ms + h (z_j − M)/τ) off the label, p_j = e_j / S
        const double c = gw.coef(), g = in.g[k], h = BEnt ? in.h[k] : 0.0;
        const double inv_s = std::exp(-s.log_sum);
        const double py = std::exp(lp);
        b.x = x;
        b.temperature = tau;
        b.M = static_cast<A>(s.max);
        b.alpha = static_cast<A>(-c * (g - h * s.mean_shift) * inv_t * inv_s);
        b.beta = static_cast<A>(-c * h * inv_t * inv_t * inv_s);
        b.label = y;
        b.grad_label = static_cast<A>(
            c * inv_t * (-g * std::expm1(lp) - h * py * ((zy - s.max) * inv_t - s.mean_shift)));
        b.dst = gw.row(n);
        b.add = add;
        return true;
    };
    // A row whose gradient bound (c/τ)(|g| + |h|(1 + ln V + |ms|)) — |δ − p| ≤ 1 and
    // p_j |u_j − ms| ≤ 1/e + |ms|, u = (z − M)/τ — nears S's range is scanned after its
    // backward sweep; a non-finite entry is a gradient overflow (numerical_error), reported
    // after every row's input errors. Ordinary rows pay one compare.
    const double log_v = std::log(static_cast<double>(V > 0 ? V : 1));
    const auto check_overflow = [&](Index n, const RowStats& s) {
        const auto k = static_cast<std::size_t>(n);
        const double g = in.g[k], h = BEnt ? in.h[k] : 0.0;
        const double bound = std::abs(gw.coef()) * inv_t *
                             (std::abs(g) + std::abs(h) * (1.0 + log_v + std::abs(s.mean_shift)));
        if (!gw.factor_at_risk(bound)) return;
        const Index j = gw.first_nonfinite(n, V);
        if (j >= 0) r.err[k] = {"gradient overflows the storage type at", j, true};
    };
    ::rlpo::detail::parallel_region(N * V > 32768 && N > 1, [&](const ::rlpo::detail::Team& team) {
        Eigen::Array<A, Eigen::Dynamic, 1> wide, buf, ebuf, cmax;
        if (grad) buf.resize(kChunk);
        // the fused call keeps the forward's exponentials of the row (and its chunk maxima)
        // for the backward sweep: one exponential per entry instead of two
        const bool keep_exp = grad && pass == Pass::Vjp;
        if (keep_exp) {
            ebuf.resize(V + simd::width<A>);
            cmax.resize((V + kChunk - 1) / kChunk);
        }
        const auto row_ptr = [&](Index n) -> const A* {
            const S* src = in.z.data() + n * in.z.outerStride();
            if constexpr (std::is_same<S, A>::value) {
                return src;
            } else {
                wide =
                    Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(src, V).template cast<A>();
                return wide.data();
            }
        };
        team.for_blocks(N, [&](Index lo, Index hi) {
            for (Index n = lo; n < hi; ++n) {
                if (!in.active[static_cast<std::size_t>(n)]) {
                    zero_row(n);
                    continue;
                }
                const A* x = row_ptr(n);
                RowStats s;
                if (pass == Pass::Backward) {
                    const Index b = n / in.T, t = n % in.T;
                    s.max = saved->row_max(b, t);
                    s.log_sum = saved->log_sum(b, t);
                    s.mean_shift = BEnt ? saved->mean_shift(b, t) : 0.0;
                } else {
                    s = keep_exp ? forward_row<A, FEnt>(x, V, tau, ebuf.data(), cmax.data())
                                 : forward_row<A, FEnt>(x, V, tau);
                }
                Back back;
                if (prepare(n, x, s, back)) {
                    if (keep_exp) {
                        back.e = ebuf.data();
                        back.cmax = cmax.data();
                    }
                    if constexpr (std::is_same<S, A>::value)
                        if (n + 1 < hi) back.next = in.z.data() + (n + 1) * in.z.outerStride();
                    back.row(V, buf.data());
                    check_overflow(n, s);
                }
            }
        });
        ::rlpo::detail::simd::store_fence();  // order the streaming stores before returning
    });
}

/// The sweeps of one call, then the per-row results combined in row order.
template <class S>
void run_rows(const char* fn, const Inputs<S>& in, double tau, bool entropy, Pass pass,
              const TokenLogps<S>* saved, const ::rlpo::detail::GradWriter<S>& gw,
              TokenLogps<S>& out) {
    using A = arith_t<S>;
    const Index N = in.N;
    const auto n_rows = static_cast<std::size_t>(N);
    const bool has_h = !in.h.empty();
    RowResults r(N);
    if (entropy && has_h)
        sweep_rows<S, true, true>(in, tau, pass, saved, gw, r);
    else if (entropy)
        sweep_rows<S, true, false>(in, tau, pass, saved, gw, r);
    else if (has_h)
        sweep_rows<S, false, true>(in, tau, pass, saved, gw, r);
    else
        sweep_rows<S, false, false>(in, tau, pass, saved, gw, r);
    const auto& err = r.err;
    const auto& lp = r.lp;
    const auto& ent = r.ent;
    const auto& st = r.st;
    for (Index n = 0; n < N; ++n) {
        const auto k = static_cast<std::size_t>(n);
        if (!err[k].what || err[k].overflow) continue;  // input errors first
        const Index b = n / in.T, t = n % in.T;
        if (err[k].col >= 0)
            fail(fn, "logits: ", err[k].what, " at [", n, ", ", err[k].col, "] (row of [", b, ", ",
                 t, "], under a non-zero mask)");
        fail(fn, "logits: ", err[k].what, " in row ", n, " (row of [", b, ", ", t,
             "], under a non-zero mask)");
    }
    for (Index n = 0; n < N; ++n) {
        const auto k = static_cast<std::size_t>(n);
        if (err[k].overflow)
            ::rlpo::detail::fail_numerical(
                fn, "logits: the ", err[k].what, " [", n, ", ", err[k].col,
                "] (upstream gradient, coefficient or 1/temperature too large)");
    }
    double value = 0.0, hsum = 0.0;
    for (std::size_t k = 0; k < n_rows; ++k) {
        if (!in.active[k]) continue;
        if (!in.g.empty()) value += in.g[k] * lp[k] + (has_h ? in.h[k] * ent[k] : 0.0);
        hsum += ent[k];
    }
    out.value = gw.coef() * value;
    out.temperature = tau;
    if (pass == Pass::Backward) return;
    const Index B = in.B, T = in.T;
    out.logp.setZero(B, T);
    out.row_max.setZero(B, T);
    out.log_sum.setZero(B, T);
    if (entropy) {
        out.entropy.setZero(B, T);
        out.mean_shift.setZero(B, T);
    }
    for (Index n = 0; n < N; ++n) {
        const auto k = static_cast<std::size_t>(n);
        if (!in.active[k]) continue;
        const Index b = n / T, t = n % T;
        out.logp(b, t) = static_cast<A>(lp[k]);
        out.row_max(b, t) = st[k].max;
        out.log_sum(b, t) = st[k].log_sum;
        if (entropy) {
            out.entropy(b, t) = static_cast<A>(ent[k]);
            out.mean_shift(b, t) = st[k].mean_shift;
        }
    }
    if (entropy) out.metrics.add("entropy", hsum, in.count);
}

template <class S>
void check_options(const char* fn, const TokenLogpsOptions& o) {
    ::rlpo::detail::check_positive(fn, "temperature", o.temperature);
}

}  // namespace detail

/// Forward: log softmax(z/τ)[label] per token (and H with `opts.entropy`), plus the rows
/// `token_logps_backward` needs. See the file comment for the formula and the bad input.
template <class DZ, class DL, class DM>
TokenLogps<::rlpo::detail::scalar_t<DZ>> token_logps(const Eigen::MatrixBase<DZ>& logits,
                                                     const Eigen::MatrixBase<DL>& labels,
                                                     const Eigen::MatrixBase<DM>& mask,
                                                     const TokenLogpsOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(is_logit_scalar_v<S>, "rlpo::logits: logits must be float, double or bfloat16");
    constexpr const char* fn = "logits::token_logps";
    detail::check_options<S>(fn, opts);
    const detail::Inputs<S> in(fn, logits, labels, mask);
    TokenLogps<S> out;
    Result<S> unused;
    const ::rlpo::detail::GradWriter<S> gw(fn, unused, no_grad<S>(), in.N, in.V);
    detail::run_rows<S>(fn, in, opts.temperature, opts.entropy, detail::Pass::Forward, nullptr, gw,
                        out);
    return out;
}

namespace detail {

template <class S, class DZ, class DL, class DM, class DG, class DH>
Result<S> backward_impl(const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
                        const Eigen::MatrixBase<DM>& mask, const TokenLogps<S>& fwd,
                        const Eigen::MatrixBase<DG>& grad_logp, const Eigen::MatrixBase<DH>* grad_h,
                        const GradientOut<S>& out) {
    constexpr const char* fn = "logits::token_logps_backward";
    Inputs<S> in(fn, logits, labels, mask);
    ::rlpo::detail::check_positive(fn, "fwd.temperature", fwd.temperature);
    RLPO_CHECK(fwd.row_max.rows() == in.B && fwd.row_max.cols() == in.T &&
                   fwd.log_sum.rows() == in.B && fwd.log_sum.cols() == in.T,
               fn, "fwd: a forward of shape [", in.B, ", ", in.T, "] is needed, given [",
               fwd.row_max.rows(), ", ", fwd.row_max.cols(), "]");
    in.upstream(fn, "grad_logp", grad_logp, in.g);
    if (grad_h) {
        RLPO_CHECK(fwd.mean_shift.rows() == in.B && fwd.mean_shift.cols() == in.T, fn,
                   "grad_entropy: the forward was computed without the entropy "
                   "(TokenLogpsOptions::entropy)");
        in.upstream(fn, "grad_entropy", *grad_h, in.h);
    }
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> gw(fn, res, out, in.N, in.V);
    TokenLogps<S> tmp;
    run_rows<S>(fn, in, fwd.temperature, false, Pass::Backward, &fwd, gw, tmp);
    res.value = tmp.value;
    return res;
}

template <class S, class DZ, class DL, class DM, class DG, class DH>
TokenLogps<S> vjp_impl(const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
                       const Eigen::MatrixBase<DM>& mask, const Eigen::MatrixBase<DG>& grad_logp,
                       const Eigen::MatrixBase<DH>* grad_h, const TokenLogpsOptions& opts,
                       const GradientOut<S>& out) {
    constexpr const char* fn = "logits::token_logps_vjp";
    check_options<S>(fn, opts);
    Inputs<S> in(fn, logits, labels, mask);
    in.upstream(fn, "grad_logp", grad_logp, in.g);
    if (grad_h) in.upstream(fn, "grad_entropy", *grad_h, in.h);
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> gw(fn, res, out, in.N, in.V);
    TokenLogps<S> r;
    // with a GradMode::None sink the forward alone runs (the value is still formed)
    run_rows<S>(fn, in, opts.temperature, opts.entropy || grad_h != nullptr,
                gw.active() ? Pass::Vjp : Pass::Forward, nullptr, gw, r);
    r.grad = std::move(res.grad);
    return r;
}

}  // namespace detail

/// Backward from a forward's saved rows: ∂(coef·Σ g logp)/∂logits (file comment). `fwd` must
/// come from `token_logps` on the same logits, labels and mask.
template <class DZ, class DL, class DM, class DG>
Result<::rlpo::detail::scalar_t<DZ>> token_logps_backward(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
    const Eigen::MatrixBase<DM>& mask, const TokenLogps<::rlpo::detail::scalar_t<DZ>>& fwd,
    const Eigen::MatrixBase<DG>& grad_logp,
    const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(is_logit_scalar_v<S>, "rlpo::logits: logits must be float, double or bfloat16");
    return detail::backward_impl<S>(logits, labels, mask, fwd, grad_logp,
                                    static_cast<const Eigen::MatrixBase<DG>*>(nullptr), out);
}

/// Backward with an entropy upstream h = ∂loss/∂H as well (`fwd` computed with the entropy).
template <class DZ, class DL, class DM, class DG, class DH>
Result<::rlpo::detail::scalar_t<DZ>> token_logps_backward(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
    const Eigen::MatrixBase<DM>& mask, const TokenLogps<::rlpo::detail::scalar_t<DZ>>& fwd,
    const Eigen::MatrixBase<DG>& grad_logp, const Eigen::MatrixBase<DH>& grad_entropy,
    const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(is_logit_scalar_v<S>, "rlpo::logits: logits must be float, double or bfloat16");
    return detail::backward_impl<S>(logits, labels, mask, fwd, grad_logp, &grad_entropy, out);
}

/// Forward and backward in one call for an upstream g known in advance (file comment): the
/// forward's outputs, `value` = coef·Σ g logp and the gradient (in `grad`, or the sink).
template <class DZ, class DL, class DM, class DG>
TokenLogps<::rlpo::detail::scalar_t<DZ>> token_logps_vjp(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
    const Eigen::MatrixBase<DM>& mask, const Eigen::MatrixBase<DG>& grad_logp,
    const TokenLogpsOptions& opts = {}, const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(is_logit_scalar_v<S>, "rlpo::logits: logits must be float, double or bfloat16");
    return detail::vjp_impl<S>(logits, labels, mask, grad_logp,
                               static_cast<const Eigen::MatrixBase<DG>*>(nullptr), opts, out);
}

/// `token_logps_vjp` with an entropy upstream h = ∂loss/∂H (the entropy is computed).
template <class DZ, class DL, class DM, class DG, class DH>
TokenLogps<::rlpo::detail::scalar_t<DZ>> token_logps_vjp(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DL>& labels,
    const Eigen::MatrixBase<DM>& mask, const Eigen::MatrixBase<DG>& grad_logp,
    const Eigen::MatrixBase<DH>& grad_entropy, const TokenLogpsOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(is_logit_scalar_v<S>, "rlpo::logits: logits must be float, double or bfloat16");
    return detail::vjp_impl<S>(logits, labels, mask, grad_logp, &grad_entropy, opts, out);
}

}  // namespace rlpo::logits
