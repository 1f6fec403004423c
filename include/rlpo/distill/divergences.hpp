#pragma once
/// \file
/// Distillation divergences between a teacher and a student over the vocabulary, one fused
/// kernel per divergence, with the gradient w.r.t. the student logits.
///
/// Per token row n of `[N, V]` logits, with temperature τ, student q = softmax(z/τ) and
/// teacher p = softmax(y/τ):
///
/// | `Divergence`      | L_n                                              | ∂L_n/∂z_j                          |
/// |-------------------|--------------------------------------------------|------------------------------------|
/// | `ForwardKL`       | KL(p‖q) = Σ p (log p − log q)                    | (q_j − p_j)/τ                      |
/// | `ReverseKL`       | KL(q‖p) = Σ q (log q − log p)                    | q_j (log q_j − log p_j − L)/τ      |
/// | `JSD` (β)         | β KL(p‖M) + (1−β) KL(q‖M), M = βp + (1−β)q       | (1−β) q_j (log(q_j/M_j) − KL(q‖M))/τ |
/// | `SkewKL` (α)      | KL(p‖αp + (1−α)q)                                | q_j (g_j − Σ q g)/τ, g = −(1−α)p/m |
/// | `SkewReverseKL`(α)| KL(q‖(1−α)p + αq)                                | q_j (g_j − Σ q g)/τ, g = log(q/m) + 1 − αq/m |
/// | `TVD`             | ½ Σ |p − q|                                      | q_j (g_j − Σ q g)/τ, g = ½ sign(q − p) |
///
/// (The JSD gradient uses ∂JSD/∂q_j = (1−β) log(q_j/M_j): the β-terms cancel.) The loss is
/// Σ_n c m_n L_n: rows are token rows of sequences given by a `[B, T]` row mask with B·T = N
/// (row n is sequence n / T, position n % T; m_n = 0 — padding or `ignore_index` — excludes
/// the row: never read, gradient exactly 0), aggregated by a `Normalizer` exactly as token
/// losses are (core/aggregation.hpp), so the five modes, the external (global) counts and
/// micro-batch invariance carry over. Callers with flat rows pass an `[N, 1]` mask (each row
/// its own sequence) or use the overload without a mask (all rows, token-mean).
/// `mask_from_labels(labels, ignore_index)` builds the mask from `[B, T]` labels.
///
/// **Conventions.** JSD follows TRL's `generalized_jsd_loss` / Liger's JSD: β = 0 is exactly
/// forward KL(p‖q) and β = 1 exactly reverse KL(q‖p) (special-cased, as there: the mixture
/// formula would give 0 at both ends); default β = 0.5. Skew KL / skew reverse KL are
/// DistiLLM's (Ko et al., ICML 2024), α = 0.1; DistiLLM's code evaluates the skew forward KL
/// as the cross-entropy −Σ p log m, which differs from KL(p‖m) by the teacher entropy (a
/// constant: same gradient); rlpo returns the divergence, so D(p, p) = 0. Temperature divides
/// both logit rows; `temperature_squared` multiplies value and gradient by τ² (Hinton et al.
/// 2015), off by default as in TRL GKD and Liger (`DistillOptions::hinton()` turns it on).
/// The gradient is w.r.t. the raw student logits z (the 1/τ is included).
///
/// **Speed.** A softmax gradient needs two sweeps over a row (the normaliser comes last), so
/// each thread runs its contiguous block of rows through a software pipeline and every sweep
/// serves several rows at once, in L1-sized chunks of 2048 entries:
///   * stage 1 of row n: both exponentials per entry (a short base-2 exponential on AVX-512,
///     see core/simd/fast_math.hpp), stored to a pair of per-thread work rows, with their
///     sums and the KL value terms, and the maxima of the next chunk read one chunk ahead
///     (chunk maxima merged as in an online softmax);
///   * stage 2 of row n − 1 (JSD, skew KL, skew reverse KL, TVD): the value terms (one
///     table-driven log per entry for JSD and skew KL) and the per-entry gradient factor
///     (JSD: r = log q − log M; TVD: sign(q − p)), stored over the teacher exponentials; JSD
///     and TVD sum the unnormalised exponentials times their terms and scale by the chunk's
///     normalising factor once per chunk. JSD reads no teacher logits here: KL(p‖M) =
///     KL(p‖q) + Σ p r, with KL(p‖q) summed in stage 1. For long rows its lean variant reads
///     no logits at all (`kLeanCapable`): r = −log((1−β) + c_k e_p/e_q) from the two
///     exponentials alone (c_k the chunk's ratio of normalising factors), one log and a
///     division per entry; chunks where e_q may be subnormal or the ratio overflow take the
///     log-difference form instead;
///   * stage 3 of the oldest row: the gradient, written once (streaming stores for overwritten
///     float gradients), from the work rows, which stage 1 then refills in place.
/// The three stages run in one fused sweep per chunk, so that the reads of one row, the
/// arithmetic of the next and the gradient writes of a third overlap (docs/distill.md has the
/// measurements behind this design). Rows holding a non-finite logit, or whose sums or value
/// come out non-finite, leave the pipeline for an exact slower path. Long rows (V = 151936)
/// are shared by the threads instead: each sweeps its own range of chunks of every row (the
/// ranges follow the threads' sweep times), and thread 0 merges the per-chunk sums between
/// barriers (`dense_rows_fast`), so that a thread's share stays in its L2 and a single row
/// uses every thread. Per-thread (or, for shared rows,
/// per-call) scratch of at most two pairs of V-rows; no `[N, V]` temporary beyond the gradient
/// the caller asked for (pass a `GradientOut` over a row block to stream rows in chunks: rows
/// are independent).
/// Arithmetic in float (double for double logits), float sums within chunks and double
/// across chunks; bfloat16 logits are widened to float row by row and the gradient is rounded
/// back to bfloat16. Per-row values are combined in row order and every chunk's arithmetic is
/// the same whoever computes it, so results are identical for any thread count.
///
/// **Metrics**: the divergence's name (`forward_kl`, `reverse_kl`, `jsd`, `skew_kl`,
/// `skew_reverse_kl`, `tvd`) = mean of L_n (τ²-scaled when on) over unmasked rows,
/// mask-weighted.
///
/// **Bad input** (rlpo::invalid_argument): teacher shape ≠ student shape; mask not `[B, T]`
/// with B·T = N, or with negative / non-finite entries; τ ≤ 0; β or α outside [0, 1]; in a row
/// under a non-zero mask: a NaN or +inf logit (named with its position), a row of only −inf
/// (no distribution), or an infinite divergence (e.g. forward KL where the student logit is
/// −inf and the teacher has mass). −inf logits elsewhere are zero probabilities (exact 0).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/fast_math.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace rlpo::distill {

enum class Divergence { ForwardKL, ReverseKL, JSD, SkewKL, SkewReverseKL, TVD };

/// Metric / display name.
inline const char* to_string(Divergence d) {
    switch (d) {
        case Divergence::ForwardKL: return "forward_kl";
        case Divergence::ReverseKL: return "reverse_kl";
        case Divergence::JSD: return "jsd";
        case Divergence::SkewKL: return "skew_kl";
        case Divergence::SkewReverseKL: return "skew_reverse_kl";
        case Divergence::TVD: return "tvd";
    }
    return "?";
}

/// Parse `forward_kl`/`fkl`/`kl`, `reverse_kl`/`rkl`, `jsd`, `skew_kl`/`skl`,
/// `skew_reverse_kl`/`srkl`, `tvd`; unknown names throw with the valid list.
inline Divergence parse_divergence(const std::string& name) {
    struct Entry {
        const char* name;
        Divergence d;
    };
    static const Entry table[] = {{"forward_kl", Divergence::ForwardKL},
                                  {"fkl", Divergence::ForwardKL},
                                  {"kl", Divergence::ForwardKL},
                                  {"reverse_kl", Divergence::ReverseKL},
                                  {"rkl", Divergence::ReverseKL},
                                  {"jsd", Divergence::JSD},
                                  {"skew_kl", Divergence::SkewKL},
                                  {"skl", Divergence::SkewKL},
                                  {"skew_reverse_kl", Divergence::SkewReverseKL},
                                  {"srkl", Divergence::SkewReverseKL},
                                  {"tvd", Divergence::TVD}};
    std::string valid;
    for (const auto& e : table) {
        if (name == e.name) return e.d;
        valid += valid.empty() ? "" : ", ";
        valid += e.name;
    }
    ::rlpo::detail::fail("distill::parse_divergence", "name: unknown divergence '", name,
                         "'; valid names: ", valid);
}

struct DistillOptions {
    Divergence divergence = Divergence::ForwardKL;
    double temperature = 1.0;          ///< τ > 0, divides both logit rows
    bool temperature_squared = false;  ///< multiply value and gradient by τ² (Hinton)
    double beta = 0.5;                 ///< JSD β ∈ [0, 1] (TRL/Liger convention)
    double alpha = 0.1;                ///< skew α ∈ [0, 1] (DistiLLM)

    static DistillOptions make(Divergence d) {
        DistillOptions o;
        o.divergence = d;
        return o;
    }
    /// Hinton et al. 2015: forward KL at temperature τ, scaled by τ².
    static DistillOptions hinton(double tau) {
        DistillOptions o;
        o.temperature = tau;
        o.temperature_squared = true;
        return o;
    }
    /// TRL GKDTrainer: generalized JSD with β = 0.5 and temperature 0.9, no τ² scaling.
    static DistillOptions trl_gkd(double beta = 0.5, double tau = 0.9) {
        DistillOptions o;
        o.divergence = Divergence::JSD;
        o.beta = beta;
        o.temperature = tau;
        return o;
    }
    /// Liger LigerFusedLinearJSD / LigerJSD: β = 0.5, τ = 1.
    static DistillOptions liger_jsd(double beta = 0.5) {
        DistillOptions o;
        o.divergence = Divergence::JSD;
        o.beta = beta;
        return o;
    }
    /// DistiLLM: skew KL (or skew reverse KL) with α = 0.1.
    static DistillOptions distillm(bool reverse = false, double alpha = 0.1) {
        DistillOptions o;
        o.divergence = reverse ? Divergence::SkewReverseKL : Divergence::SkewKL;
        o.alpha = alpha;
        return o;
    }
};

/// `[B, T]` row mask from `[B, T]` integer labels: 1 where label ≠ ignore_index, else 0.
template <class DL>
inline Mat<float> mask_from_labels(const Eigen::MatrixBase<DL>& labels,
                                   long long ignore_index = -100) {
    Mat<float> m(labels.rows(), labels.cols());
    for (Index i = 0; i < labels.rows(); ++i)
        for (Index t = 0; t < labels.cols(); ++t)
            m(i, t) = static_cast<long long>(labels.derived()(i, t)) == ignore_index ? 0.f : 1.f;
    return m;
}

namespace detail {

inline void validate(const char* fn, const DistillOptions& o) {
    ::rlpo::detail::check_positive(fn, "temperature", o.temperature);
    RLPO_CHECK(o.beta >= 0 && o.beta <= 1, fn, "beta: must be in [0, 1], given ", o.beta);
    RLPO_CHECK(o.alpha >= 0 && o.alpha <= 1, fn, "alpha: must be in [0, 1], given ", o.alpha);
}

/// out = log(w1·e^l1 + w2·e^l2) entry by entry, from log-probabilities l1, l2: max(u, v) +
/// log1p(e^−|u − v|) with u = l1 + log w1, v = l2 + log w2. The log of a mixture such as
/// JSD's M = βp + (1−β)q, formed this way, never sees the mixture underflow: M itself
/// rounds to 0 where p is subnormal and q is 0 (logit ranges beyond about 103/τ in float),
/// and log 0 would make a finite divergence infinite. Entries where both l1 and l2 are −inf
/// give NaN; callers mask them (both probabilities are 0 there).
template <class A, class E1, class E2>
inline void log_mix(ArrMap<A> out, const E1& l1, const E2& l2, double w1, double w2) {
    const A a1 = static_cast<A>(std::log(w1)), a2 = static_cast<A>(std::log(w2));
    out = (l1 + a1).max(l2 + a2);
    out += (-((l1 + a1) - (l2 + a2)).abs()).exp().log1p();
}

/// One row of a dense divergence. z, y: the widened logit rows; returns L (without τ²).
/// `Safe` handles −inf logits exactly (zero probabilities) at the price of scalar selects.
template <bool Safe, class S, class A>
inline double dense_row_impl(const DistillOptions& o, const A* z, const A* y, A mz, A my, Index V,
                             Scratch<A>& ws, const RowGrad<S>& rg) {
    const A invT = static_cast<A>(1.0 / o.temperature);
    const CArrMap<A> za(z, V), ya(y, V);
    ArrMap<A> eq(ws.a.data(), V), ep(ws.b.data(), V);
    const double sq = static_cast<double>(exp_row<Safe>(z, V, mz, invT, ws.a.data()));
    const double sp = static_cast<double>(exp_row<Safe>(y, V, my, invT, ws.b.data()));
    const double lsq = std::log(sq), lsp = std::log(sp);
    // log q_j = (z_j − mz)/τ + cq;  log p_j = (y_j − my)/τ + cp: logits enter only shifted by
    // their row maxima, so large logits cost no float digits
    const A cq = static_cast<A>(-lsq), cp = static_cast<A>(-lsp);
    const auto zs = za - mz;
    const auto ys = ya - my;
    const A iq = static_cast<A>(1.0 / sq), ip = static_cast<A>(1.0 / sp);
    const A zero(0);
    Divergence d = o.divergence;
    if (d == Divergence::JSD && o.beta == 0.0) d = Divergence::ForwardKL;
    if (d == Divergence::JSD && o.beta == 1.0) d = Divergence::ReverseKL;
    switch (d) {
        case Divergence::ForwardKL: {
            // L = Σ p ((y − my) − (z − mz))/τ + (cp − cq)
            const double a = keep_if<Safe>(ep > zero, ep * (ys - zs)).template cast<double>().sum();
            const double L = a * ip * invT + static_cast<double>(cp) - static_cast<double>(cq);
            if (!std::isfinite(L)) return L;
            rg.set((eq * iq - ep * ip) * invT);
            return L;
        }
        case Divergence::ReverseKL: {
            const double b = keep_if<Safe>(eq > zero, eq * (zs - ys)).template cast<double>().sum();
            const double L = b * iq * invT + static_cast<double>(cq) - static_cast<double>(cp);
            if (!std::isfinite(L)) return L;
            const A k = static_cast<A>(static_cast<double>(cq) - static_cast<double>(cp) - L);
            rg.set(keep_if<Safe>(eq > zero, eq * iq * ((zs - ys) * invT + k)) * invT);
            return L;
        }
        case Divergence::JSD: {
            const A omb = static_cast<A>(1.0 - o.beta);
            // log M from log p and log q (`log_mix`); q, p normalised in place; KL(p‖M)
            // summed, then ep ← log(q/M) (0 where q = 0)
            const ArrMap<A> lm = mix_row(ws, V);
            log_mix<A>(lm, ys * invT + cp, zs * invT + cq, o.beta, 1.0 - o.beta);
            eq *= iq;
            ep *= ip;
            const double klp = keep_if<Safe>(ep > zero, ep * ((ys * invT + cp) - lm))
                                   .template cast<double>()
                                   .sum();
            ep = keep_if<Safe>(eq > zero, (zs * invT + cq) - lm);
            const double klq = (eq * ep).template cast<double>().sum();
            const double L = o.beta * klp + (1.0 - o.beta) * klq;
            if (!std::isfinite(L)) return L;
            const A kq = static_cast<A>(klq);
            rg.set(omb * eq * (ep - kq) * invT);
            return L;
        }
        case Divergence::SkewKL: {
            const A oma = static_cast<A>(1.0 - o.alpha);
            // L = Σ p (log p − log m), m = αp + (1−α)q (log m: `log_mix`);  g = −(1−α) p/m
            const ArrMap<A> lm = mix_row(ws, V);
            log_mix<A>(lm, ys * invT + cp, zs * invT + cq, o.alpha, 1.0 - o.alpha);
            eq *= iq;
            ep *= ip;
            const double L = keep_if<Safe>(ep > zero, ep * ((ys * invT + cp) - lm))
                                 .template cast<double>()
                                 .sum();
            if (!std::isfinite(L)) return L;
            ep = keep_if<Safe>(ep > zero, -oma * ((ys * invT + cp) - lm).exp());
            const A sg = (eq * ep).sum();
            rg.set(eq * (ep - sg) * invT);
            return L;
        }
        case Divergence::SkewReverseKL: {
            const A al = static_cast<A>(o.alpha);
            // m = (1−α)p + αq (log m: `log_mix`);  L = Σ q log(q/m);  ∂L/∂q = log(q/m) + 1 −
            // αq/m
            const ArrMap<A> lm = mix_row(ws, V);
            log_mix<A>(lm, ys * invT + cp, zs * invT + cq, 1.0 - o.alpha, o.alpha);
            eq *= iq;
            ep *= ip;
            ep = keep_if<Safe>(eq > zero, (zs * invT + cq) - lm);
            const double L = (eq * ep).template cast<double>().sum();
            if (!std::isfinite(L)) return L;
            // g − 1 = log(q/m) − α q/m, with q/m = exp(log(q/m))
            ep = keep_if<Safe>(eq > zero, ep - al * ep.exp());
            const A sg = (eq * ep).sum();
            rg.set(eq * (ep - sg) * invT);
            return L;
        }
        case Divergence::TVD: {
            eq *= iq;
            ep *= ip;
            const double L = 0.5 * (ep - eq).abs().template cast<double>().sum();
            const A half(0.5);
            ep = half * (eq - ep).sign();
            const A sg = (eq * ep).sum();
            rg.set(eq * (ep - sg) * invT);
            return L;
        }
    }
    return 0.0;
}

/// Forces `x` to be rounded to its type here (keeps the compiler from fusing the product
/// that made it into a later subtraction).
#if defined(__GNUC__) && defined(__SSE2__)
#define RLPO_DISTILL_ROUNDED(x) __asm__ volatile("" : "+v"(x))
#elif defined(EIGEN_OPTIMIZATION_BARRIER)
#define RLPO_DISTILL_ROUNDED(x) EIGEN_OPTIMIZATION_BARRIER(x)
#else
#define RLPO_DISTILL_ROUNDED(x) (void)0
#endif

/// Unroll the next loop by two where the compiler has a pragma for it.
#if defined(__clang__)
#define RLPO_DISTILL_UNROLL2 _Pragma("unroll 2")
#elif defined(__GNUC__)
#define RLPO_DISTILL_UNROLL2 _Pragma("GCC unroll 2")
#else
#define RLPO_DISTILL_UNROLL2
#endif

/// **Contraction.** GCC fuses a product into a later sum (`-ffp-contract=fast`, its default
/// outside ISO mode) across statements and inlined calls, packet intrinsics included, and
/// not necessarily in the same way in every copy of a function: `fused_chunk` is instantiated
/// once per combination of stages, so the same row would round differently with and without
/// a gradient, or with one thread and two. (Seen: forward KL in double, tuned for AMD Zen,
/// summed a row tail's Σ ep·(dy − dz) fused in one copy and not in the other.) So every
/// product that meets a sum in these kernels is either an explicit multiply-add (`pmadd`,
/// `std::fma`, `madd_as_packet`) or rounded first (`rounded`); none is left to the compiler.

/// `x`, rounded to its type at this point (a product so marked is never fused into a sum).
template <class T>
EIGEN_ALWAYS_INLINE T rounded(T x) {
    RLPO_DISTILL_ROUNDED(x);
    return x;
}

/// a·b + c rounded as the build's `pmadd` on packets rounds it (fused with a hardware
/// multiply-add, else a product and a sum), so that a row's tail entries match its packets.
template <class A>
inline A madd_as_packet(A a, A b, A c) {
#if defined(__FMA__) || defined(EIGEN_VECTORIZE_FMA)
    return std::fma(a, b, c);
#else
    A p = a * b;
    RLPO_DISTILL_ROUNDED(p);
    return p + c;
#endif
}

/// sign(t) ∈ {−1, 0, +1}, 0 for ±0 and NaN (a NaN t makes the value NaN anyway), exact for
/// subnormal t: on AVX-512 float packets one `vfixupimmps`, which maps each class of t to a
/// constant; elsewhere two comparisons.
template <class T>
inline T sign_of(const T& t) {
    namespace ei = Eigen::internal;
    if constexpr (std::is_floating_point<T>::value) {
        return static_cast<T>((t > T(0)) - (t < T(0)));
    } else {
#if defined(__AVX512F__)
        using Tr = ei::unpacket_traits<T>;
        if constexpr (std::is_same<typename Tr::type, float>::value && Tr::size == 16)
            return ::rlpo::detail::simd::avx512::sign_by_class(t);
#endif
        using A = typename ei::unpacket_traits<T>::type;
        const T zero = ei::pzero(t), one = ei::pset1<T>(A(1));
        return ei::psub(ei::pand(ei::pcmp_lt(zero, t), one), ei::pand(ei::pcmp_lt(t, zero), one));
    }
}

/// Σ of a vector expression: float (vectorised) within chunks, double across chunks.
template <class E>
inline double sum_chunks(const E& e) {
    double s = 0.0;
    const Index V = e.size();
    for (Index off = 0; off < V; off += kRowChunk)
        s += static_cast<double>(e.segment(off, std::min(kRowChunk, V - off)).sum());
    return s;
}

/// The maxima of one chunk of both logit rows, in one vectorised sweep. (NaN and −inf are not
/// looked for here: they make a row sum or the value non-finite and the row is then redone on
/// the exact path; a +inf shows up as the maximum.)
template <class A>
inline void chunk_max(const A* z, const A* y, Index len, A& zmax, A& ymax) {
    namespace ei = Eigen::internal;
    using P = Packet<A>;
    constexpr Index W = kPacket<A>;
    constexpr A inf = std::numeric_limits<A>::infinity();
    const Index lv = len - len % W;
    zmax = ymax = -inf;
    if (lv > 0) {
        P pz = ei::ploadu<P>(z), py = ei::ploadu<P>(y);
        for (Index j = W; j < lv; j += W) {
            pz = ei::pmax(pz, ei::ploadu<P>(z + j));
            py = ei::pmax(py, ei::ploadu<P>(y + j));
        }
        zmax = ei::predux_max(pz);
        ymax = ei::predux_max(py);
    }
    for (Index j = lv; j < len; ++j) {
        zmax = std::max(zmax, z[j]);
        ymax = std::max(ymax, y[j]);
    }
}

/// exp((x − max)/τ) of the softmax sweeps: for float the short base-2 exponential of
/// core/simd/fast_math.hpp of (x − max)·a with a = log2(e)/τ, for double Eigen's `pexp` of
/// (x − max)/τ. The subtraction comes first (`packet_shifted`), or, with a hardware
/// multiply-add, the argument is one instruction (`packet_fused`): t = fma(x, a, −fl(max·a)).
/// There x·a is exact inside the multiply-add; the constant's rounding δ = max·a − fl(max·a)
/// (`delta`, exact in double) is the same for the whole chunk, exp2(t) = 2^((x − max)·a + δ),
/// and the caller divides its chunk factor by 2^δ. (Rounding max·a without that correction
/// would be an absolute error in the exponent that grows with the size of the logits.)
template <class A>
struct ShiftedExp {
    A m, a, nc;  // nc = −fl(m·a)
    static A scale(A invT) {
        return std::is_same<A, float>::value
                   ? static_cast<A>(1.4426950408889634 * static_cast<double>(invT))
                   : invT;
    }
    ShiftedExp(A max, A invT) : m(max), a(scale(invT)), nc(-(max * a)) {}
    /// δ = max·a − fl(max·a) of `packet_fused` (0 for a non-finite max)
    static double delta(A max, A invT) {
        const A a = scale(invT), r = max * a;
        const double d = static_cast<double>(max) * static_cast<double>(a) - static_cast<double>(r);
        return std::isfinite(d) ? d : 0.0;
    }
    /// 2^(x·a − fl(max·a)) for float with a fused multiply-add (see above).
    template <class P>
    P packet_arg(const P& x) const {
        namespace ei = Eigen::internal;
        return ei::pmadd(x, ei::pset1<P>(a), ei::pset1<P>(nc));
    }
    A scalar_arg(A x) const { return std::fma(x, a, nc); }
    template <class P>
    P packet_fused(const P& x) const {
        return ::rlpo::detail::pexp2(packet_arg(x));
    }
    A scalar_fused(A x) const { return ::rlpo::detail::exp2_scalar(scalar_arg(x)); }
    /// exp of d/τ for an already shifted d = x − max.
    template <class P>
    P packet_shifted(const P& d) const {
        namespace ei = Eigen::internal;
        const P t = ei::pmul(d, ei::pset1<P>(a));
        if constexpr (std::is_same<A, float>::value)
            return ::rlpo::detail::pexp2(t);
        else
            return ei::pexp(t);
    }
    A scalar_shifted(A d) const {
        if constexpr (std::is_same<A, float>::value)
            return ::rlpo::detail::exp2_scalar(d * a);
        else
            return std::exp(d * a);
    }
};

/// One row in flight through the pipelined fast path (`dense_rows_fast`).
template <class S, class A>
struct Slot {
    Index n = -1;          ///< the row; −1: empty
    const A* z = nullptr;  ///< its logits in the arithmetic type
    const A* y = nullptr;
    const A* nz = nullptr;           ///< the next row's logits, prefetched (from the
    const A* ny = nullptr;           ///< thread's first chunk) during the last chunk of stage 1
    Arr<A> zb, yb;                   ///< widened copies (bfloat16 input only)
    A* w0 = nullptr;                 ///< work rows (a pair of the thread's work buffers,
    A* w1 = nullptr;                 ///< shared in place with the row two stages ahead)
    std::vector<A> mz, my;           ///< chunk maxima
    std::vector<double> s0, s1, s2;  ///< per-chunk sums of the stage the row is in
    std::vector<A> f0, f1;           ///< per-chunk factors of the row's next stage
    /// per chunk: the exponents of the chunk factors, then their exponentials (every
    /// divergence, scratch of `finish_stage1`), then the probability masses of q and p (JSD).
    /// Aligned, so that the vectorised exp in `finish_stage1` treats every entry the same
    /// way whatever the allocation (a packet versus an unaligned head entry would differ)
    std::vector<double, Eigen::aligned_allocator<double>> m0, m1;
    std::vector<A> tmin;    ///< JSD lean: the chunk's least student exponent argument
    std::vector<A> ck;      ///< JSD lean: β f_p/f_q of the chunk; −1: log form
    A c0 = 0, c1 = 0;       ///< row constants of the row's next stage
    double cq = 0, cp = 0;  ///< log q = z/τ + cq, log p = y/τ + cp (row constants)
    double kpq = 0;         ///< JSD: KL(p‖q), from stage 1
    double L = 0.0;
    RowGrad<S> rg;
    void size(Index nc) {
        const auto k = static_cast<std::size_t>(nc);
        mz.resize(k);
        my.resize(k);
        s0.resize(k);
        s1.resize(k);
        s2.resize(k);
        f0.resize(k);
        f1.resize(k);
        m0.resize(k);
        m1.resize(k);
        tmin.resize(k);
        ck.resize(k);
    }
};

/// Constants of a pass.
template <class A>
struct DenseCtx {
    A invT, beta, omb, al, oma;
    Index V, nc;
    bool lean = false;  ///< JSD's lean value sweep (`kLeanCapable`)
};

/// Where a stage-3 packet goes: streamed (overwritten float rows, aligned), stored, or added;
/// bfloat16 rows are rounded entry by entry.
template <class S, class A>
struct GradSink {
    S* dst = nullptr;
    bool add = false, stream = false;
    template <class P>
    EIGEN_ALWAYS_INLINE void packet(Index j, const P& v) const {
        namespace ei = Eigen::internal;
        if constexpr (simd::kStreamingStores && std::is_same<S, float>::value &&
                      std::is_same<A, float>::value) {
            if (stream) {
                simd::stream_packet(dst + j, v);
                return;
            }
        }
        if constexpr (std::is_same<S, A>::value) {
            if (add)
                ei::pstoreu(dst + j, ei::padd(ei::ploadu<P>(dst + j), rounded(v)));
            else
                ei::pstoreu(dst + j, v);
        } else {
            constexpr Index W = kPacket<A>;
            alignas(64) A t[W];
            ei::pstore(t, v);
            for (Index i = 0; i < W; ++i) scalar(j + i, t[i]);
        }
    }
    void scalar(Index j, A v) const {
        if (add)
            dst[j] = static_cast<S>(static_cast<A>(dst[j]) + rounded(v));
        else
            dst[j] = static_cast<S>(v);
    }
};

/// Tuning of the fast path, for tests and benchmarks (not thread-safe to change during a
/// call).
struct FastPathTuning {
    /// Row split when the per-thread working set of the row-block mode exceeds this many
    /// bytes (see `dense_rows_fast`): 0 splits every multi-threaded pass, SIZE_MAX never.
    std::size_t split_bytes = std::size_t(3) << 19;  // 1.5 MiB of a core's 2 MiB L2
    /// Move the row split's chunk ranges by a fixed pattern every step instead of after the
    /// sweep times (`balance_ranges`), so that tests see rows swept under changing ranges.
    bool shuffle_ranges = false;
    /// JSD takes the lean value sweep (`kLeanCapable`) when its row-block working set (7·V
    /// floats) exceeds this many bytes: 0 always, SIZE_MAX never.
    std::size_t lean_bytes = std::size_t(3) << 19;
    /// Every chunk of JSD's lean sweep takes the log form (`kLeanCapable`), so that tests see
    /// it on ordinary rows.
    bool lean_log_form = false;
};
inline FastPathTuning& fast_path_tuning() {
    static FastPathTuning t;
    return t;
}

/// What the fast path did, for tests: the rows it sent to the exact path (non-finite logits,
/// sums or values), counted over all calls.
struct FastPathStats {
    std::atomic<std::size_t> exact_rows{0};
};
inline FastPathStats& fast_path_stats() {
    static FastPathStats s;
    return s;
}

/// Whether a divergence takes the three-stage pipeline (a value sweep between the
/// exponentials and the gradient).
constexpr bool three_stage(Divergence d) {
    return d == Divergence::JSD || d == Divergence::SkewKL || d == Divergence::SkewReverseKL ||
           d == Divergence::TVD;
}

/// Whether stage 1 forms the exponent in one multiply-add (`ShiftedExp::packet_fused`):
/// float, a hardware multiply-add (without one `pmadd` rounds the product), and a divergence
/// whose stage 1 needs only the exponentials (the three-stage ones).
template <Divergence D, class A>
inline constexpr bool kFusedArg =
#if defined(__FMA__) || defined(EIGEN_VECTORIZE_FMA)
    std::is_same<A, float>::value&& three_stage(D);
#else
    false;
#endif

/// Whether JSD can take the lean value sweep, chosen for long rows (`dense_rows_fast`). Its
/// stage 2 reads no logits (4 rows in flight in a thread instead of 7). With q = e_q f_q and
/// p = e_p f_p (f the chunk factors), log(M/q) = log((1−β) + c_k ρ), ρ = e_p/e_q, c_k =
/// β f_p/f_q, so stage 2 forms l = −r = log(M/q) from the two stored exponentials alone: a
/// division and one log per entry, no exponential, and no cancellation of
/// log q against log M. That needs e_q normal and c_k ρ finite; stage 1 keeps the chunk's
/// least exponent argument t_min (ρ ≤ 2^−t_min, as the teacher's arguments are ≤ 0 up to
/// the rounding δ), and `finish_stage1` sends a chunk with t_min < −125, a zero f_q or
/// log2 c_k − t_min ≥ 120 to the log form l = log M − log q instead, with log q = t·ln 2 +
/// fl(log f_q) from the student's logits (re-read for that chunk only; the rounding of
/// fl(log f_q) comes back in `finish_stage2`). Which form a chunk takes depends on the row's
/// data only, never on the threads.
template <Divergence D, class A>
inline constexpr bool kLeanCapable = D == Divergence::JSD&& kFusedArg<D, A>;

/// log f of a chunk factor of the lean sweep's log form, rounded to float, and its rounding
/// e = log f − fl(log f) (a factor 0 — the chunk's probabilities all underflow — takes the
/// log of the smallest subnormal: finite, and multiplied by zero probabilities only).
template <class A>
inline A lean_log_factor(A f, double& e) {
    const double l =
        std::log(static_cast<double>(f > A(0) ? f : std::numeric_limits<A>::denorm_min()));
    const A r = static_cast<A>(l);
    e = l - static_cast<double>(r);
    return r;
}

/// One chunk of up to three rows in one fused sweep (the pipelined fast path):
///   * stage 1 on row `a`: exponentials of both rows (stored to the work rows), their sums
///     and the KL value terms, and the maxima of the next chunk (read one chunk ahead);
///   * stage 2 on row `b` (three-stage divergences): q and p normalised, the value terms, and
///     the per-entry factor of the gradient (work rows, in cache);
///   * stage 3 on row `g`: the gradient, written once.
/// Entries [lv, len) — at most one packet, in the last chunk — are done entry by entry.
template <Divergence D, bool St1, bool St2, bool St3, bool Lean, class S, class A>
inline void fused_chunk(const DenseCtx<A>& c, Index k, Index kbeg, Index kend, Slot<S, A>* a,
                        Slot<S, A>* b, Slot<S, A>* g) {
    namespace ei = Eigen::internal;
    using P = Packet<A>;
    constexpr Index W = kPacket<A>;
    constexpr Index C = kRowChunk;
    constexpr A inf = std::numeric_limits<A>::infinity();
    const Index off = k * C, len = std::min(C, c.V - off), lv = len - len % W;
    const auto kk = static_cast<std::size_t>(k);
    const P zero = ei::pset1<P>(A(0));
    // stage 1
    const bool la = St1 && k + 1 < kend;  // the next chunk's maxima (same thread's range)
    const Index nlen = la ? std::min(C, c.V - off - C) : 0, nlv = nlen - nlen % W;
    const ShiftedExp<A> ez(St1 ? a->mz[kk] : A(0), c.invT), ey(St1 ? a->my[kk] : A(0), c.invT);
    const P pmz = ei::pset1<P>(ez.m), pmy = ei::pset1<P>(ey.m);
    const A* za = St1 ? a->z + off : nullptr;
    // the last chunk of the thread's range prefetches the first of the next row
    const A* pz = St1 && !la && a->nz ? a->nz + kbeg * C : nullptr;
    const A* py = St1 && !la && a->ny ? a->ny + kbeg * C : nullptr;
    const Index plv = pz ? std::min(C, c.V - kbeg * C) : 0;
    const A* ya = St1 ? a->y + off : nullptr;
    A* wa0 = St1 ? a->w0 + off : nullptr;
    A* wa1 = St1 ? a->w1 + off : nullptr;
    P s1 = zero, s2 = zero, s3 = zero, nz = ei::pset1<P>(-inf), ny = nz;
    P tmn = ei::pset1<P>(inf);  // lean: the least exponent argument of the student
    // stage 2
    A* wb0 = St2 ? b->w0 + off : nullptr;
    A* wb1 = St2 ? b->w1 + off : nullptr;
    const A* zb = St2 ? b->z + off : nullptr;
    const A* yb = St2 ? b->y + off : nullptr;
    const A fq = St2 ? b->f0[kk] : A(0), fp = St2 ? b->f1[kk] : A(0);
    const A mq = c.omb * fq, mp = c.beta * fp;  // JSD's mixture weights of eq, ep
    // log q = (z − mz_k)/τ + cq_k: small terms only, no cancellation of large logits. With a
    // hardware multiply-add (kFusedArg) log q = fma(z, 1/τ, fl(cq)) on the raw logit instead:
    // z/τ is exact inside it, and fl(cq)'s rounding, the same for the whole row, comes back
    // in `finish_stage2`.
    constexpr bool kRawLog = kFusedArg<D, A>;
    const A mzb = St2 && !kRawLog ? b->mz[kk] : A(0), myb = St2 && !kRawLog ? b->my[kk] : A(0);
    const double it = static_cast<double>(c.invT);
    const A cq = St2 ? static_cast<A>(b->cq + static_cast<double>(mzb) * it) : A(0);
    const A cp = St2 ? static_cast<A>(b->cp + static_cast<double>(myb) * it) : A(0);
    P u1 = zero, u2 = zero;
    A v1 = 0, v2 = 0;  // (entry-by-entry tail)
    constexpr A kLn2f = A(0.6931471805599453);
    // lean: l = log((1−β) + c_k e_p/e_q), or the log form for a chunk marked by c_k < 0
    const A ckk = St2 && Lean ? b->ck[kk] : A(0);
    const bool logform = St2 && Lean && ckk < A(0);
    const A omb = c.omb;  // (a local: the stores below could alias c)
    const P pck = ei::pset1<P>(ckk), pomb = ei::pset1<P>(omb);
    // stage 3
    const A* wg0 = St3 ? g->w0 + off : nullptr;
    const A* wg1 = St3 ? g->w1 + off : nullptr;
    const A h0 = St3 ? g->f0[kk] : A(0), h1 = St3 ? g->f1[kk] : A(0);
    const A k0 = St3 ? g->c0 : A(0), k1 = St3 ? g->c1 : A(0), hk = h0 * k1, nk = -(k0 * hk);
    GradSink<S, A> sink;
    if constexpr (St3) {
        sink.dst = g->rg.dst + off;
        sink.add = g->rg.add;
        sink.stream = !sink.add && reinterpret_cast<std::uintptr_t>(sink.dst) % sizeof(P) == 0;
    }
    const A invT = c.invT;
    // software prefetch distance (entries) ahead of the next-chunk reads
    constexpr Index kPf = 512;

    // Stage 2 takes the unnormalised exponentials eq, ep of the chunk (q = eq·fq, p = ep·fp)
    // and the shifted logits zv, yv; it gives the per-entry gradient factor `o2` (stored to
    // w1) and two value sums v1, v2 that `finish_stage2` scales by the chunk factors where
    // they are sums of eq·(…) or ep·(…) (JSD, TVD: two multiplies fewer per entry).
    // Works for packets and scalars alike.
    auto stage2 = [&](auto eq, auto ep, auto zv, auto yv, auto& o2, auto& v1, auto& v2) {
        using T = std::decay_t<decltype(eq)>;
        constexpr bool pk = !std::is_same<T, A>::value;
        auto set1 = [](A x) {
            if constexpr (pk)
                return ei::pset1<T>(x);
            else
                return x;
        };
        auto mul = [](T x, T y) {
            if constexpr (pk)
                return rounded(ei::pmul(x, y));
            else
                return rounded(x * y);
        };
        auto add = [](T x, T y) {
            if constexpr (pk)
                return ei::padd(x, y);
            else
                return x + y;
        };
        auto sub = [](T x, T y) {
            if constexpr (pk)
                return ei::psub(x, y);
            else
                return x - y;
        };
        auto madd = [](T x, T y, T z) {
            if constexpr (pk)
                return ei::pmadd(x, y, z);
            else
                return madd_as_packet(x, y, z);
        };
        auto lg = [](T x) {
            if constexpr (pk)
                return ::rlpo::detail::plog(x);
            else
                return std::log(x);
        };
        // v/τ + k: log q, log p from the (shifted or raw) logits; fused for raw logits
        auto lin = [&](T v, A k) {
            if constexpr (pk)
                return ei::pmadd(v, ei::pset1<T>(invT), ei::pset1<T>(k));
            else if constexpr (kRawLog)
                return std::fma(v, invT, k);
            else
                return madd_as_packet(v, invT, k);
        };
        if constexpr (D == Divergence::JSD) {
            // M = βp + (1−β)q = eq·(1−β)fq + ep·βfp; r = log q − log M; v1 = Σ ep r (× fp),
            // v2 = Σ eq r (× fq). KL(p‖M) = KL(p‖q) + Σ p r, KL(p‖q) from stage 1: the
            // teacher's logits are not read again.
            static_cast<void>(yv);
            const T lm = lg(madd(eq, set1(mq), mul(ep, set1(mp))));
            const T r = sub(lin(zv, cq), lm);
            v1 = madd(ep, r, v1);
            v2 = madd(eq, r, v2);
            o2 = r;
        } else if constexpr (D == Divergence::TVD) {
            // s = sign(q − p) (h = s/2); v1 = Σ |q − p| = Σ (q − p) s, v2 = Σ eq s (× fq/2).
            // q and p are rounded before the subtraction, so that equal rows give s = 0.
            T q = mul(eq, set1(fq)), p = mul(ep, set1(fp));
            RLPO_DISTILL_ROUNDED(q);
            RLPO_DISTILL_ROUNDED(p);
            const T t = sub(q, p);
            const T h = sign_of(t);
            v1 = madd(t, h, v1);
            v2 = madd(eq, h, v2);
            o2 = h;
        } else if constexpr (D == Divergence::SkewKL) {
            // m = αp + (1−α)q; value p (log p − log m); factor −(1−α) p/m
            const T q = mul(eq, set1(fq)), p = mul(ep, set1(fp));
            const T m = add(mul(set1(c.al), p), mul(set1(c.oma), q));
            const T lp = lin(yv, cp);
            v1 = madd(p, sub(lp, lg(m)), v1);
            T h;
            if constexpr (pk)
                h = ei::pdiv(ei::pmul(ei::pset1<T>(-c.oma), p), m);
            else
                h = -c.oma * p / m;
            v2 = madd(q, h, v2);
            o2 = h;
        } else {  // SkewReverseKL: m = (1−α)p + αq; r = log(q/m); factor r − α q/m
            const T q = mul(eq, set1(fq)), p = mul(ep, set1(fp));
            const T m = add(mul(set1(c.oma), p), mul(set1(c.al), q));
            const T r = sub(lin(zv, cq), lg(m));
            v1 = madd(q, r, v1);
            T h;
            if constexpr (pk)
                h = ei::psub(r, ei::pdiv(ei::pmul(ei::pset1<T>(c.al), q), m));
            else
                h = r - c.al * q / m;
            v2 = madd(q, h, v2);
            o2 = h;
        }
    };

    // Lean, log form (rare: see `kLeanCapable`): l = log M − log q, log q = t·ln 2 + fl(log
    // f_q) with t recomputed from the student's logits exactly as stage 1 formed it; the
    // rounding of fl(log f_q) goes to s2 for `finish_stage2` (0 for the other chunks). The
    // chunk's stage 2 is done here and skipped in the fused loop below (its rows are not
    // touched by the other two stages).
    if constexpr (St2 && Lean) {
        double lqe = 0;
        if (logform) {
            const A lqk = lean_log_factor(fq, lqe);
            const ShiftedExp<A> eb(b->mz[kk], c.invT);
            auto logform_l = [&](auto eq, auto ep, auto z) {
                using T = std::decay_t<decltype(eq)>;
                if constexpr (std::is_same<T, A>::value) {
                    const A lq = madd_as_packet(eb.scalar_arg(z), kLn2f, lqk);
                    return static_cast<A>(std::log(madd_as_packet(eq, mq, rounded(ep * mp))) - lq);
                } else {
                    const T lq =
                        ei::pmadd(eb.packet_arg(z), ei::pset1<T>(kLn2f), ei::pset1<T>(lqk));
                    const T m =
                        ei::pmadd(eq, ei::pset1<T>(mq), rounded(ei::pmul(ep, ei::pset1<T>(mp))));
                    return ei::psub(::rlpo::detail::plog(m), lq);
                }
            };
            for (Index j = 0; j < lv; j += W) {
                const P eq = ei::ploadu<P>(wb0 + j), ep = ei::ploadu<P>(wb1 + j);
                const P l = logform_l(eq, ep, ei::ploadu<P>(zb + j));
                u1 = ei::pmadd(ep, l, u1);
                u2 = ei::pmadd(eq, l, u2);
                ei::pstoreu(wb1 + j, l);
            }
            for (Index j = lv; j < len; ++j) {
                const A l = logform_l(wb0[j], wb1[j], zb[j]);
                v1 = madd_as_packet(wb1[j], l, v1);
                v2 = madd_as_packet(wb0[j], l, v2);
                wb1[j] = l;
            }
        }
        b->s2[kk] = lqe;
    }

    // Stage 3 reads its entries before stage 1 overwrites them: rows two stages apart share
    // one pair of work buffers. (Unrolled by two: 2–3 % faster in paired runs at
    // 2048 × 32768, all four benchmarked divergences; the same arithmetic in the same order.)
    RLPO_DISTILL_UNROLL2
    for (Index j = 0; j < lv; j += W) {
        if constexpr (St3) {
            const P x0 = ei::ploadu<P>(wg0 + j), x1 = ei::ploadu<P>(wg1 + j);
            P v;
            if constexpr (D == Divergence::ForwardKL)  // q/τ − p/τ
                v = ei::psub(rounded(ei::pmul(x0, ei::pset1<P>(h0))),
                             rounded(ei::pmul(x1, ei::pset1<P>(h1))));
            else if constexpr (D == Divergence::ReverseKL)  // q ((z − y)/τ + k)/τ
                v = ei::pmul(ei::pmul(x0, ei::pset1<P>(h0)),
                             ei::pmadd(x1, ei::pset1<P>(invT), ei::pset1<P>(h1)));
            else  // q (factor − shift) · c1 = e_q · (factor · hk − shift · hk), hk = f · c1
                v = ei::pmul(x0, ei::pmadd(x1, ei::pset1<P>(hk), ei::pset1<P>(nk)));
            sink.packet(j, v);
        }
        if constexpr (St2 && Lean) {
            // l = log((1−β) + c_k e_p/e_q) = −r over e_p; e_q stays for stage 3
            if (!logform) {
                const P eq = ei::ploadu<P>(wb0 + j), ep = ei::ploadu<P>(wb1 + j);
                const P l = ::rlpo::detail::plog(ei::pmadd(ei::pdiv(ep, eq), pck, pomb));
                u1 = ei::pmadd(ep, l, u1);
                u2 = ei::pmadd(eq, l, u2);
                ei::pstoreu(wb1 + j, l);
            }
        } else if constexpr (St2) {
            P o2;
            P zv = ei::ploadu<P>(zb + j), yv = ei::ploadu<P>(yb + j);
            if constexpr (!kRawLog) {
                zv = ei::psub(zv, ei::pset1<P>(mzb));
                yv = ei::psub(yv, ei::pset1<P>(myb));
            }
            stage2(ei::ploadu<P>(wb0 + j), ei::ploadu<P>(wb1 + j), zv, yv, o2, u1, u2);
            // e_q stays (stage 3 multiplies by the chunk factor again)
            ei::pstoreu(wb1 + j, o2);
        }
        if constexpr (St1) {
            if (la && j < nlv) {
                simd::prefetch_l1(za + C + kPf + j);
                simd::prefetch_l1(ya + C + kPf + j);
                nz = ei::pmax(nz, ei::ploadu<P>(za + C + j));
                ny = ei::pmax(ny, ei::ploadu<P>(ya + C + j));
            }
            if (j < plv) {
                simd::prefetch_l1(pz + j);
                simd::prefetch_l1(py + j);
            }
            if constexpr (kFusedArg<D, A>) {
                const P tz = ez.packet_arg(ei::ploadu<P>(za + j));
                const P ty = ey.packet_arg(ei::ploadu<P>(ya + j));
                const P eq = ::rlpo::detail::pexp2(tz), ep = ::rlpo::detail::pexp2(ty);
                s1 = ei::padd(s1, eq);
                s2 = ei::padd(s2, ep);
                // JSD: Σ ep (log2 ep − log2 eq), for KL(p‖q)
                if constexpr (D == Divergence::JSD) s3 = ei::pmadd(ep, ei::psub(ty, tz), s3);
                if constexpr (Lean) tmn = ei::pmin(tmn, tz);
                ei::pstoreu(wa0 + j, eq);
                ei::pstoreu(wa1 + j, ep);
                continue;
            }
            // logits shifted by their chunk maxima: the value terms below use these small
            // differences, never the raw (possibly large) logits
            const P dz = ei::psub(ei::ploadu<P>(za + j), pmz);
            const P dy = ei::psub(ei::ploadu<P>(ya + j), pmy);
            const P eq = ez.packet_shifted(dz), ep = ey.packet_shifted(dy);
            s1 = ei::padd(s1, eq);
            s2 = ei::padd(s2, ep);
            ei::pstoreu(wa0 + j, eq);
            if constexpr (D == Divergence::ForwardKL || D == Divergence::JSD) {
                s3 = ei::pmadd(ep, ei::psub(dy, dz), s3);
                ei::pstoreu(wa1 + j, ep);
            } else if constexpr (D == Divergence::ReverseKL) {
                const P d = ei::psub(dz, dy);
                s3 = ei::pmadd(eq, d, s3);
                ei::pstoreu(wa1 + j, d);
            } else {
                ei::pstoreu(wa1 + j, ep);
            }
        }
    }
    A t1 = 0, t2 = 0, t3 = 0, tm = inf;
    for (Index j = lv; j < len; ++j) {
        if constexpr (St3) {
            A v;
            if constexpr (D == Divergence::ForwardKL)
                v = rounded(wg0[j] * h0) - rounded(wg1[j] * h1);
            else if constexpr (D == Divergence::ReverseKL)
                v = wg0[j] * h0 * madd_as_packet(wg1[j], invT, h1);
            else
                v = wg0[j] * madd_as_packet(wg1[j], hk, nk);
            sink.scalar(j, v);
        }
        if constexpr (St2 && Lean) {
            if (!logform) {
                const A eq = wb0[j], ep = wb1[j];
                const A l = std::log(madd_as_packet(ep / eq, ckk, omb));
                v1 = madd_as_packet(ep, l, v1);
                v2 = madd_as_packet(eq, l, v2);
                wb1[j] = l;
            }
        } else if constexpr (St2) {
            A o2;
            stage2(wb0[j], wb1[j], zb[j] - mzb, yb[j] - myb, o2, v1, v2);
            wb1[j] = o2;
        }
        if constexpr (St1 && kFusedArg<D, A>) {
            const A tz = ez.scalar_arg(za[j]), ty = ey.scalar_arg(ya[j]);
            const A eq = ::rlpo::detail::exp2_scalar(tz), ep = ::rlpo::detail::exp2_scalar(ty);
            t1 += eq;
            t2 += ep;
            if constexpr (D == Divergence::JSD) t3 = madd_as_packet(ep, ty - tz, t3);
            if constexpr (Lean) tm = std::min(tm, tz);
            wa0[j] = eq;
            wa1[j] = ep;
        } else if constexpr (St1) {
            const A dz = za[j] - ez.m, dy = ya[j] - ey.m;
            const A eq = ez.scalar_shifted(dz), ep = ey.scalar_shifted(dy);
            t1 += eq;
            t2 += ep;
            wa0[j] = eq;
            if constexpr (D == Divergence::ForwardKL || D == Divergence::JSD) {
                t3 = madd_as_packet(ep, dy - dz, t3);
                wa1[j] = ep;
            } else if constexpr (D == Divergence::ReverseKL) {
                t3 = madd_as_packet(eq, dz - dy, t3);
                wa1[j] = dz - dy;
            } else {
                wa1[j] = ep;
            }
        }
    }
    if constexpr (St1) {
        a->s0[kk] = static_cast<double>(ei::predux(s1) + t1);
        a->s1[kk] = static_cast<double>(ei::predux(s2) + t2);
        a->s2[kk] = static_cast<double>(ei::predux(s3) + t3);
        if constexpr (Lean) a->tmin[kk] = std::min(lv > 0 ? ei::predux_min(tmn) : inf, tm);
        if (la) {
            A mzn = nlv > 0 ? ei::predux_max(nz) : -inf, myn = nlv > 0 ? ei::predux_max(ny) : -inf;
            for (Index j = nlv; j < nlen; ++j) {
                mzn = std::max(mzn, za[C + j]);
                myn = std::max(myn, ya[C + j]);
            }
            a->mz[kk + 1] = mzn;
            a->my[kk + 1] = myn;
        }
    }
    if constexpr (St2) {
        b->s0[kk] = static_cast<double>(ei::predux(u1) + v1);
        b->s1[kk] = static_cast<double>(ei::predux(u2) + v2);
    }
}

/// Chunks [k0, k1) of one pipeline step with the given stages present (all chunks, or one
/// thread's share of the rows in the row-split mode). Stage 1 expects the maxima of chunk k0
/// to be set (`chunk_max`); it finds those of the following chunks itself.
template <Divergence D, bool St1, bool St2, bool St3, bool Lean, class S, class A>
inline void fused_row_step(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b,
                           Slot<S, A>* g) {
    for (Index k = k0; k < k1; ++k)
        fused_chunk<D, St1, St2, St3, Lean, S, A>(c, k, k0, k1, a, b, g);
}

template <Divergence D, bool Lean, class S, class A>
inline void fused_step_as(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b,
                          Slot<S, A>* g) {
    const int m = (a ? 4 : 0) | (b ? 2 : 0) | (g ? 1 : 0);
    if constexpr (!three_stage(D)) {
        switch (m & 5) {
            case 5: return fused_row_step<D, true, false, true, Lean>(c, k0, k1, a, b, g);
            case 4: return fused_row_step<D, true, false, false, Lean>(c, k0, k1, a, b, g);
            case 1: return fused_row_step<D, false, false, true, Lean>(c, k0, k1, a, b, g);
            default: return;
        }
    }
    switch (m) {
        case 7: return fused_row_step<D, true, true, true, Lean>(c, k0, k1, a, b, g);
        case 6: return fused_row_step<D, true, true, false, Lean>(c, k0, k1, a, b, g);
        case 5: return fused_row_step<D, true, false, true, Lean>(c, k0, k1, a, b, g);
        case 4: return fused_row_step<D, true, false, false, Lean>(c, k0, k1, a, b, g);
        case 3: return fused_row_step<D, false, true, true, Lean>(c, k0, k1, a, b, g);
        case 2: return fused_row_step<D, false, true, false, Lean>(c, k0, k1, a, b, g);
        case 1: return fused_row_step<D, false, false, true, Lean>(c, k0, k1, a, b, g);
        default: return;
    }
}

/// Chunks [k0, k1) of the rows in stages 1, 2, 3 (a, b, g; null where none).
template <Divergence D, class S, class A>
inline void fused_step(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b,
                       Slot<S, A>* g) {
    if constexpr (kLeanCapable<D, A>)
        if (c.lean) return fused_step_as<D, true, S, A>(c, k0, k1, a, b, g);
    fused_step_as<D, false, S, A>(c, k0, k1, a, b, g);
}

/// JSD's lean sweep: c_k = β f_p/f_q per chunk for l = log((1−β) + c_k e_p/e_q), or −1 where
/// that form is not safe and the chunk takes the log form (see `kLeanCapable`): e_q may be
/// subnormal (t_min < −125), f_q is 0, or c_k ρ may overflow (log2 c_k − t_min ≥ 120).
template <class S, class A>
inline void lean_chunk_forms(const DenseCtx<A>& c, Slot<S, A>& a) {
    const bool all_log = fast_path_tuning().lean_log_form;
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double fq = static_cast<double>(a.f0[kk]), fp = static_cast<double>(a.f1[kk]);
        const double ck = static_cast<double>(c.beta) * fp / fq,
                     tm = static_cast<double>(a.tmin[kk]);
        // (ilogb(c_k) ≤ log2 c_k < ilogb(c_k) + 1; ilogb(0) is FP_ILOGB0, negative)
        const bool ok = !all_log && fq > 0 && tm >= -125.0 && std::isfinite(ck) &&
                        (ck == 0 || std::ilogb(ck) + 1 - tm < 120.0);
        a.ck[kk] = ok ? static_cast<A>(ck) : A(-1);
    }
}

/// After stage 1 of row `a`: merge the chunk maxima and sums (as an online softmax), and set
/// up the next stage (for forward / reverse KL the value and the gradient factors, with the
/// row's gradient scale folded in). False when the row needs the exact path (a non-finite
/// maximum, sum or value: NaN, ±inf or a −inf logit somewhere).
template <Divergence D, class S, class A>
inline bool finish_stage1(const DenseCtx<A>& c, Slot<S, A>& a) {
    constexpr double kLn2 = 0.6931471805599453;
    const double invT = static_cast<double>(c.invT);
    double mz = -std::numeric_limits<double>::infinity(), my = mz;
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double zk = static_cast<double>(a.mz[kk]), yk = static_cast<double>(a.my[kk]);
        if (!(std::abs(zk) < std::numeric_limits<double>::infinity()) ||
            !(std::abs(yk) < std::numeric_limits<double>::infinity()))
            return false;
        mz = std::max(mz, zk);
        my = std::max(my, yk);
    }
    // Stage 1 summed the KL terms over logits shifted by their chunk maxima (dz = z − mz_k,
    // dy = y − my_k); the shifts come back here in double, as differences of maxima only, so
    // that large logits (rows offset by hundreds) cost no float digits. The chunk factors
    // e^(dz_k/τ) (with kFusedArg over 2^δ, `ShiftedExp::delta`) in one vectorised pass first,
    // m0 and m1 holding their exponents: the merge is serial in the row split.
    const auto nck = static_cast<std::size_t>(c.nc);
    auto delta = [&](A m) {
        if constexpr (kFusedArg<D, A>) {
            return ShiftedExp<A>::delta(m, c.invT);
        } else {
            static_cast<void>(m);
            return 0.0;
        }
    };
    // (explicit multiply-adds: this loop may be vectorised, and a compiler must not contract
    // its head, body and tail differently — which entries fall where depends on allocation)
    for (std::size_t kk = 0; kk < nck; ++kk) {
        a.m0[kk] = std::fma(static_cast<double>(a.mz[kk]) - mz, invT, -(delta(a.mz[kk]) * kLn2));
        a.m1[kk] = std::fma(static_cast<double>(a.my[kk]) - my, invT, -(delta(a.my[kk]) * kLn2));
    }
    Eigen::Map<Eigen::ArrayXd, Eigen::AlignedMax> e0(a.m0.data(), c.nc), e1(a.m1.data(), c.nc);
    e0 = e0.exp();
    e1 = e1.exp();
    double sq = 0, sp = 0, x = 0;
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double dzk = static_cast<double>(a.mz[kk]) - mz,
                     dyk = static_cast<double>(a.my[kk]) - my;
        const double ez = a.m0[kk], ey = a.m1[kk];
        const double dlz = delta(a.mz[kk]), dly = delta(a.my[kk]);
        // (explicit multiply-adds throughout: a compiler free to contract would not have to
        // do it the same way in every copy of this code, and results must not depend on the
        // copy that runs)
        using std::fma;
        if (D == Divergence::ForwardKL)  // Σ p (y − z) = Σ ep (dy − dz) + (my_k − mz_k) Σ ep
            x = fma(ey, fma(a.s1[kk], dyk - dzk, a.s2[kk]), x);
        else if (D == Divergence::ReverseKL)
            x = fma(ez, fma(a.s0[kk], dzk - dyk, a.s2[kk]), x);
        else if (D == Divergence::JSD && kFusedArg<D, A>)
            // Σ p log(p/q) in nats: the chunk's sum of ep (log2 ep − log2 eq), whose
            // exponents carry δy_k − δz_k, plus the shift of the chunk maxima
            x = fma(ey, fma(kLn2, a.s2[kk], a.s1[kk] * fma(dyk - dzk, invT, -((dly - dlz) * kLn2))),
                    x);
        else if (D == Divergence::JSD)  // as forward KL
            x = fma(ey * invT, fma(a.s1[kk], dyk - dzk, a.s2[kk]), x);
        sq = fma(a.s0[kk], ez, sq);
        sp = fma(a.s1[kk], ey, sp);
        a.m0[kk] = a.s0[kk] * ez;  // the chunk's masses, normalised below
        a.m1[kk] = a.s1[kk] * ey;
        a.s0[kk] = ez;  // keep the chunk factors
        a.s1[kk] = ey;
    }
    if (!std::isfinite(sq + sp + x)) return false;
    const double lsq = std::log(sq), lsp = std::log(sp);
    const double scale = a.rg.scale;
    if constexpr (D == Divergence::ForwardKL || D == Divergence::ReverseKL) {
        // forward: Σ p (log p − log q) = Σ p (y − z)/τ + (mz − my)/τ + log sq − log sp
        const double L = D == Divergence::ForwardKL ? std::fma(x / sp, invT, lsq) - lsp
                                                    : std::fma(x / sq, invT, lsp) - lsq;
        if (!std::isfinite(L)) return false;
        a.L = L;
        const double iq = scale * invT / sq, ip = scale * invT / sp;
        for (Index k = 0; k < c.nc; ++k) {
            const auto kk = static_cast<std::size_t>(k);
            a.f0[kk] = static_cast<A>(a.s0[kk] * iq);
            if (D == Divergence::ForwardKL) {
                a.f1[kk] = static_cast<A>(a.s1[kk] * ip);
            } else {  // log q − log p − L = (dz − dy)/τ + f1_k
                const double dzk = static_cast<double>(a.mz[kk]) - mz,
                             dyk = static_cast<double>(a.my[kk]) - my;
                a.f1[kk] = static_cast<A>(std::fma(dzk - dyk, invT, lsp) - lsq - L);
            }
        }
    } else {
        a.cq = std::fma(-mz, invT, -lsq);
        a.cp = std::fma(-my, invT, -lsp);
        if (D == Divergence::JSD) a.kpq = x / sp + lsq - lsp;
        const double iq = 1 / sq, ip = 1 / sp;
        for (Index k = 0; k < c.nc; ++k) {
            const auto kk = static_cast<std::size_t>(k);
            a.f0[kk] = static_cast<A>(a.s0[kk] * iq);
            a.f1[kk] = static_cast<A>(a.s1[kk] * ip);
            a.m0[kk] *= iq;
            a.m1[kk] *= ip;
        }
        if constexpr (kLeanCapable<D, A>)
            if (c.lean) lean_chunk_forms(c, a);
    }
    return true;
}

/// After stage 2 of row `b` (three-stage divergences): the value, and the gradient constants
/// q_j (h_j − c0) · c1. False when the value is not finite (the exact path decides).
template <Divergence D, class S, class A>
inline bool finish_stage2(const DenseCtx<A>& c, Slot<S, A>& b) {
    // JSD: v1 and v2 are sums of ep·(…) and eq·(…); TVD: v2 is a sum of eq·sign (explicit
    // multiply-adds, as in `finish_stage1`)
    double u1 = 0, u2 = 0;
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double f0 = static_cast<double>(b.f0[kk]), f1 = static_cast<double>(b.f1[kk]);
        u1 = std::fma(D == Divergence::JSD ? f1 : 1.0, b.s0[kk], u1);
        u2 = std::fma(D == Divergence::JSD || D == Divergence::TVD ? f0 : 1.0, b.s1[kk], u2);
    }
    // With kFusedArg, stage 2 formed log q and log p with the row constants rounded to float,
    // off by e = c − fl(c) at every entry: the value sums lack e·Σq = e (log q) or e·Σp = e
    // (log p). The gradient needs no correction: it uses h − Σ q h, in which e cancels.
    double eq = 0, ep = 0;
    if constexpr (kFusedArg<D, A>) {
        eq = b.cq - static_cast<double>(static_cast<A>(b.cq));
        ep = b.cp - static_cast<double>(static_cast<A>(b.cp));
    }
    // JSD: r = log q − log M lacks eq at every entry, so Σ q r lacks eq·Σq = eq and Σ p r
    // lacks eq·Σp = eq. The lean sweep sums l = −r instead (negated below); in its log-form
    // chunks r = −l lacks e_k = log f_k − fl(log f_k): Σ_k e_k × the chunk's mass of q (of p).
    double rq = eq, rp = eq;
    bool lean = false;
    if constexpr (kLeanCapable<D, A>) {
        lean = c.lean;
        if (lean) {
            rq = rp = 0;
            for (Index k = 0; k < c.nc; ++k) {  // s2: e_k, left by stage 2 (0: ratio form)
                const auto kk = static_cast<std::size_t>(k);
                rq = std::fma(b.s2[kk], b.m0[kk], rq);
                rp = std::fma(b.s2[kk], b.m1[kk], rp);
            }
            u1 = -u1;  // Σ p r, Σ q r
            u2 = -u2;
        }
    }
    double L = u1, factor = static_cast<double>(c.invT);
    if constexpr (D == Divergence::JSD) {
        // KL(p‖M) = KL(p‖q) + Σ p r, KL(q‖M) = Σ q r, r = log q − log M
        L = std::fma(static_cast<double>(c.beta), b.kpq + u1 + rp,
                     static_cast<double>(c.omb) * (u2 + rq));
        // the lean sweep's gradient factor is l = −r: q (r − Σ q r) = −q (l − Σ q l)
        factor *= lean ? -static_cast<double>(c.omb) : static_cast<double>(c.omb);
    } else if constexpr (D == Divergence::TVD) {
        // L = ½ Σ |q − p|; ∂L/∂z = q (h − Σ q h)/τ with h = s/2 = ½ q (s − Σ q s)/τ
        L = 0.5 * u1;
        factor *= 0.5;
    } else if constexpr (D == Divergence::SkewKL) {
        L = u1 + ep;
    } else {  // SkewReverseKL
        L = u1 + eq;
    }
    if (!std::isfinite(L) || !std::isfinite(u2)) return false;
    b.L = L;
    b.c0 = static_cast<A>(lean ? -u2 : u2);  // Σ q × the stored factor (r, or l = −r)
    b.c1 = static_cast<A>(factor * b.rg.scale);
    return true;
}

/// The exact path for one row (non-finite logits, zero probabilities, errors).
template <class S, class A>
inline double dense_row_exact(const DistillOptions& o, const A* z, const A* y, Index V,
                              Scratch<A>& ws, const RowGrad<S>& rg, RowError& err) {
    ws.ensure(V);
    const A mz = check_row(z, V, "student_logits", err);
    if (err.set()) return 0.0;
    const A my = check_row(y, V, "teacher_logits", err);
    if (err.set()) return 0.0;
    return dense_row_impl<true, S, A>(o, z, y, mz, my, V, ws, rg);
}

/// The row split's load balance: moves the boundary kb[t + 1] between threads t and t + 1
/// one chunk toward the faster of the two when their last sweep times differ by more than
/// one chunk of the slower one (a thread keeps at least one chunk). The host may slow one
/// core for a while; which thread sweeps a chunk never changes its arithmetic, so results
/// stay the same bit for bit. (`FastPathTuning::shuffle_ranges`, for tests: the boundaries
/// move by a fixed pattern of the step instead.)
inline void balance_ranges(Index* kb, const double* time, Index nt, Index nc, Index step) {
    if (fast_path_tuning().shuffle_ranges) {
        for (Index t = 1; t < nt; ++t)
            kb[t] = std::min(std::max(nc * t / nt + (step + t) % 3 - 1, kb[t - 1]), nc);
        return;
    }
    for (Index t = 0; t + 1 < nt; ++t) {
        const double ta = time[t], tb = time[t + 1];
        const Index na = kb[t + 1] - kb[t], nb = kb[t + 2] - kb[t + 1];
        if (ta > tb && na > 1 && (ta - tb) * static_cast<double>(na) > ta)
            --kb[t + 1];
        else if (tb > ta && nb > 1 && (tb - ta) * static_cast<double>(nb) > tb)
            ++kb[t + 1];
    }
}

/// The fast path over all rows, in one of two ways of sharing them between threads:
///  * row blocks: each thread takes a contiguous block of rows and runs them through a
///    software pipeline of two (forward / reverse KL) or three stages, one fused sweep per
///    chunk over all rows in flight (see `fused_chunk`), so that the reads of one row, the
///    compute of the next and the gradient writes of the previous overlap;
///  * row split (long rows): every thread runs the same pipeline over all rows but sweeps
///    only its own contiguous range of chunks [K_t, K_t+1) of each; after each step thread 0
///    merges the per-chunk maxima and sums (`finish_stage1/2`), moves the ranges toward equal
///    sweep times (`balance_ranges`) and plans the next step, between two barriers. A
///    thread's share of the logit and work rows in flight then fits in its core's L2 (at
///    V = 151936 a whole row's do not: about 2.4 MB at depth 2, 3.6–4.3 MB at depth 3), and
///    a single long row uses every thread.
/// The split is taken when the row-block working set (the logit rows and work rows in flight,
/// `arrays`·V floats) exceeds `FastPathTuning::split_bytes`, for float and double logits
/// (bfloat16 rows are widened whole into per-row copies). Every chunk's arithmetic is the
/// same in both modes — maxima, sums and gradient entries are per chunk, merged in chunk
/// order in double — so the results do not depend on the mode or the number of threads, bit
/// for bit. Rows that need the exact path leave the pipeline and are done at once (by thread
/// 0 in the row split); masked rows never enter it.
template <Divergence D, class S, class A>
inline PassResult dense_rows_fast(const char* fn, const DistillOptions& o, const RowPlan& plan,
                                  const ConstMatRef<S>& zm, const ConstMatRef<S>& ym,
                                  const ::rlpo::detail::GradWriter<S>& g, double row_scale) {
    const Index N = zm.rows(), V = zm.cols();
    std::vector<double> loss(static_cast<std::size_t>(N), 0.0),
        aux(static_cast<std::size_t>(N), 0.0);
    std::vector<RowError> errs(static_cast<std::size_t>(N));
    const bool add = g.mode() == GradMode::Add;
    DenseCtx<A> c;
    c.invT = static_cast<A>(1.0 / o.temperature);
    c.beta = static_cast<A>(o.beta);
    c.omb = static_cast<A>(1.0 - o.beta);
    c.al = static_cast<A>(o.alpha);
    c.oma = static_cast<A>(1.0 - o.alpha);
    c.V = V;
    c.nc = (V + kRowChunk - 1) / kRowChunk;
    // Pipeline depth: 2 (stage 1 of row n with stage 3 of row n − 1) or 3 (the value sweep of
    // row n − 1 fused in as well, two pairs of work buffers). TVD's value sweep is cheap: when
    // two pairs would not fit in a core's L2 (measured: V = 151936 floats, 2.4 MB) it runs on
    // its own right after stage 1 (`inline2`) with one pair. The log-heavy sweeps (JSD, skew)
    // gain more from overlapping memory than they lose to the larger footprint: always fused.
    constexpr std::size_t kWorkBudget = std::size_t(1) << 20;  // bytes of work rows at depth 3
    const bool inline2 =
        D == Divergence::TVD && 4 * static_cast<std::size_t>(V) * sizeof(A) > kWorkBudget;
    const int depth = three_stage(D) && !inline2 ? 3 : 2;
    const int npairs = depth == 3 ? 2 : 1;
    // the rows in flight in one thread: the logit rows of stage 1 (2), the work rows (2 per
    // pair) and the logit row that stage 2 reads (JSD and skew reverse KL: the student's,
    // skew KL: the teacher's, TVD: none)
    const std::size_t arrays = depth == 3 ? (D == Divergence::TVD ? 6 : 7) : 4;
    const bool split_ok =
        std::is_same<S, A>::value &&
        arrays * static_cast<std::size_t>(V) * sizeof(A) > fast_path_tuning().split_bytes;
    // JSD's lean value sweep for long rows (4 rows in flight instead of 7); by the row length
    // only, so that the results do not depend on the mode or the number of threads
    c.lean = kLeanCapable<D, A> &&
             arrays * static_cast<std::size_t>(V) * sizeof(A) > fast_path_tuning().lean_bytes;
    // the row split's shared state: slots, work buffers, and the rows of the current step
    Slot<S, A> shared_slots[3];
    Arr<A> shared_pool[2][2];
    Slot<S, A>* step[3] = {nullptr, nullptr, nullptr};  // rows in stages 1, 2, 3
    S* step_zero = nullptr;                             // a masked row's gradient to zero
    bool step_inline = false;
    // and its chunk ranges: thread t sweeps chunks [kb[t], kb[t + 1]) of every row, and
    // thread 0 moves the boundaries between steps after the threads' sweep times
    // (`balance_ranges`)
    std::vector<Index> kb;
    std::vector<double> sweep_time;
#if defined(RLPO_USE_OPENMP)
    if (split_ok) {
        kb.resize(static_cast<std::size_t>(omp_get_max_threads()) + 1);
        sweep_time.resize(kb.size());
    }
#endif
#if defined(RLPO_USE_OPENMP)
#pragma omp parallel if (N * V > 32768 && (N > 1 || split_ok))
#endif
    {
        Index nt = 1, id = 0;
#if defined(RLPO_USE_OPENMP)
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        const bool split = split_ok && nt > 1;
        const Index r0 = split ? 0 : N * id / nt, r1 = split ? N : N * (id + 1) / nt;
        if (split && id == 0)
            for (Index t = 0; t <= nt; ++t) kb[static_cast<std::size_t>(t)] = c.nc * t / nt;
        // (the barriers of the row split; nothing in the row-block mode)
        const auto sync = [&] {
            if (split) {
#if defined(RLPO_USE_OPENMP)
#pragma omp barrier
#endif
            }
        };
        Scratch<A> ws;
        Slot<S, A> own_slots[3];
        Arr<A> own_pool[2][2];
        Slot<S, A>* const slots = split ? shared_slots : own_slots;
        Arr<A>(&pool)[2][2] = split ? shared_pool : own_pool;
        // work buffers: one pair at depth 2, two at depth 3 (row n uses pair n mod 2, which
        // stage 3 of row n − 2 frees chunk by chunk in the same sweep)
        if (!split || id == 0) {
            for (int i = 0; i < npairs; ++i) {
                pool[i][0].resize(V);
                pool[i][1].resize(V);
            }
        }
        auto exact = [&](Slot<S, A>& s) {
            fast_path_stats().exact_rows.fetch_add(1, std::memory_order_relaxed);
            const auto k = static_cast<std::size_t>(s.n);
            RowError err;
            const double L = dense_row_exact<S, A>(o, s.z, s.y, V, ws, s.rg, err);
            if (!err.set() && !std::isfinite(L)) err = infinite_divergence_error();
            errs[k] = err;
            loss[k] = L;
            s.n = -1;
        };
        // row `it` into a free slot (null for a masked row, whose gradient row is returned in
        // `zero` to be zeroed)
        auto enter = [&](Index it, Slot<S, A>& a, S*& zero) -> Slot<S, A>* {
            const auto k = static_cast<std::size_t>(it);
            S* dst = g.row(it);
            if (plan.m[k] == 0) {
                if (dst && !add) zero = dst;
                return nullptr;
            }
            a.size(c.nc);
            a.n = it;
            a.w0 = pool[it % npairs][0].data();
            a.w1 = pool[it % npairs][1].data();
            a.z = widen<A, S>(zm, it, a.zb);
            a.y = widen<A, S>(ym, it, a.yb);
            const bool next = std::is_same<S, A>::value && it + 1 < r1 &&
                              plan.m[static_cast<std::size_t>(it + 1)] != 0;
            a.nz = next ? reinterpret_cast<const A*>(zm.row(it + 1).data()) : nullptr;
            a.ny = next ? reinterpret_cast<const A*>(ym.row(it + 1).data()) : nullptr;
            a.rg = make_row_grad<S, A>(g, plan, it, V, row_scale, ws);
            return &a;
        };
        // the rows of step `it`: row `it` enters stage 1 (a), the two before it are in
        // stage 2 (b, depth 3) and stage 3 (gs)
        auto plan_step = [&](Index it, Slot<S, A>*& a, Slot<S, A>*& b, Slot<S, A>*& gs, S*& zero) {
            zero = nullptr;
            a = it < r1 ? enter(it, slots[it % depth], zero) : nullptr;
            b = nullptr;
            if (depth == 3 && it - 1 >= r0) {
                Slot<S, A>& s = slots[(it - 1) % depth];
                if (s.n == it - 1) b = &s;
            }
            gs = nullptr;
            if (it - (depth - 1) >= r0) {
                Slot<S, A>& s = slots[(it - (depth - 1)) % depth];
                if (s.n == it - (depth - 1) && s.rg.active()) gs = &s;
            }
        };
        // chunks [k0, k1) of the step, entries [e0, e1): a masked row's zeroed gradient, the
        // maxima of the first chunk of row a, and the fused sweep
        auto sweep = [&](Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b, Slot<S, A>* gs,
                         S* zero) {
            const Index e0 = std::min(V, k0 * kRowChunk), e1 = std::min(V, k1 * kRowChunk);
            if (zero) Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>(zero + e0, e1 - e0).setZero();
            if (a && k0 < k1) {
                const auto kk = static_cast<std::size_t>(k0);
                chunk_max(a->z + e0, a->y + e0, std::min(kRowChunk, V - e0), a->mz[kk], a->my[kk]);
            }
            fused_step<D, S, A>(c, k0, k1, a, b, gs);
        };
        auto finish2 = [&](Slot<S, A>& s) {
            if (finish_stage2<D, S, A>(c, s))
                loss[static_cast<std::size_t>(s.n)] = s.L;
            else
                exact(s);
        };
        // after the step's sweep: the results of the rows that leave; true when the value
        // sweep of row a is due on its own (`inline2`)
        auto finish_step = [&](Slot<S, A>* a, Slot<S, A>* b, Slot<S, A>* gs) -> bool {
            if (gs) gs->n = -1;
            if (b) finish2(*b);
            if (a) {
                if (!finish_stage1<D, S, A>(c, *a))
                    exact(*a);
                else if (!three_stage(D))
                    loss[static_cast<std::size_t>(a->n)] = a->L;
                else if (inline2)
                    return true;
            }
            return false;
        };
        // One loop for both modes (one copy of the arithmetic: the results must not depend on
        // how a compiler contracts multiply-adds in two copies). In the row split thread 0
        // merges each step's results, moves the chunk ranges and plans the next step while
        // the others wait at the barrier: two barriers a step (four with `inline2`).
        Slot<S, A>* own_step[3] = {nullptr, nullptr, nullptr};
        S* own_zero = nullptr;
        bool own_inline = false;
        Slot<S, A>** const st = split ? step : own_step;
        S*& zero = split ? step_zero : own_zero;
        bool& inl = split ? step_inline : own_inline;
        const bool lead = !split || id == 0;
        const Index end = r1 + depth - 1;
        if (lead && r0 < end) plan_step(r0, st[0], st[1], st[2], zero);
        for (Index it = r0; it < end; ++it) {
            sync();  // the step's rows and chunk ranges are set
            const auto t = static_cast<std::size_t>(id);
            const Index k0 = split ? kb[t] : 0, k1 = split ? kb[t + 1] : c.nc;
            Slot<S, A>* const a = st[0];
            const auto start = std::chrono::steady_clock::now();
            sweep(k0, k1, a, st[1], st[2], zero);
            if (split)
                sweep_time[t] =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            sync();  // every chunk swept
            if (lead) inl = finish_step(a, st[1], st[2]);
            if (inline2) {
                sync();  // `inl` is set
                if (inl) {
                    fused_step<D, S, A>(c, k0, k1, nullptr, a, nullptr);
                    sync();
                    if (lead) finish2(*a);
                }
            }
            if (lead) {
                if (split) balance_ranges(kb.data(), sweep_time.data(), nt, c.nc, it);
                if (it + 1 < end) plan_step(it + 1, st[0], st[1], st[2], zero);
            }
        }
        simd::store_fence();  // order the streaming stores before the results are used
    }
    return combine_rows(fn, plan, N, loss, aux, errs, row_scale);
}

}  // namespace detail

/// Divergence between teacher and student logits (`[N, V]`, same shape and type: float,
/// double or Eigen::bfloat16), rows selected and aggregated by the `[B, T]` row `mask`
/// (B·T = N) under `norm`. Gradient w.r.t. `student_logits`.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const DistillOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    static_assert(detail::is_logit_scalar_v<S>,
                  "rlpo::distill: logits must be float, double or Eigen::bfloat16");
    static_assert(std::is_same<S, ::rlpo::detail::scalar_t<DT>>::value,
                  "rlpo::distill: student and teacher logits must have the same scalar type");
    using A = detail::acc_t<S>;
    constexpr const char* fn = "distill::divergence";
    const ConstMatRef<S> z(student_logits.derived()), y(teacher_logits.derived());
    ::rlpo::detail::check_same_shape(fn, "teacher_logits", y, "student_logits", z);
    detail::validate(fn, opts);
    const Index N = z.rows(), V = z.cols();
    const detail::RowPlan plan = detail::plan_rows(fn, N, mask, norm);
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    const double t2 = opts.temperature_squared ? opts.temperature * opts.temperature : 1.0;
    Divergence d = opts.divergence;
    if (d == Divergence::JSD && opts.beta == 0.0) d = Divergence::ForwardKL;
    if (d == Divergence::JSD && opts.beta == 1.0) d = Divergence::ReverseKL;
    detail::PassResult pass;
    switch (d) {
#define RLPO_DISTILL_CASE(K) \
    case K: pass = detail::dense_rows_fast<K, S, A>(fn, opts, plan, z, y, g, t2); break;
        RLPO_DISTILL_CASE(Divergence::ForwardKL)
        RLPO_DISTILL_CASE(Divergence::ReverseKL)
        RLPO_DISTILL_CASE(Divergence::JSD)
        RLPO_DISTILL_CASE(Divergence::SkewKL)
        RLPO_DISTILL_CASE(Divergence::SkewReverseKL)
        RLPO_DISTILL_CASE(Divergence::TVD)
#undef RLPO_DISTILL_CASE
    }
    res.value = g.coef() * pass.value;
    res.metrics.add(to_string(opts.divergence), pass.metric, pass.count);
    return res;
}

/// All rows, token-mean (no mask).
template <class DS, class DT>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const DistillOptions& opts = {}, const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    const Mat<float> ones = Mat<float>::Ones(student_logits.rows(), 1);
    return divergence(student_logits, teacher_logits, ones, opts, Normalizer{}, out);
}

#define RLPO_DISTILL_NAMED(NAME, KIND)                                                            \
    template <class DS, class DT, class DM>                                                       \
    Result<::rlpo::detail::scalar_t<DS>> NAME(                                                    \
        const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits, \
        const Eigen::MatrixBase<DM>& mask, DistillOptions opts = {}, const Normalizer& norm = {}, \
        const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {                              \
        opts.divergence = KIND;                                                                   \
        return divergence(student_logits, teacher_logits, mask, opts, norm, out);                 \
    }

/// Named shorthands: `forward_kl(z, y, mask, opts, norm, out)` = divergence with that kind.
RLPO_DISTILL_NAMED(forward_kl, Divergence::ForwardKL)
RLPO_DISTILL_NAMED(reverse_kl, Divergence::ReverseKL)
RLPO_DISTILL_NAMED(jsd, Divergence::JSD)
RLPO_DISTILL_NAMED(skew_kl, Divergence::SkewKL)
RLPO_DISTILL_NAMED(skew_reverse_kl, Divergence::SkewReverseKL)
RLPO_DISTILL_NAMED(tvd, Divergence::TVD)
#undef RLPO_DISTILL_NAMED

}  // namespace rlpo::distill
