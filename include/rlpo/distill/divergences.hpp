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
/// **Speed.** Per row: one online pass over both logit rows in L1-sized chunks (per chunk, one
/// SIMD sweep for the chunk max and min, then one sweep computing both exponentials — two
/// exps per entry in all — written to per-thread work rows, with their sums and the KL value
/// terms; for JSD / TVD one more fused sweep, after the chunk maxima are merged as in an
/// online softmax, for their value terms, with one log per entry for JSD), the next chunks
/// prefetched while one is computed; then one pass per chunk that evaluates the gradient in
/// registers and writes it (streaming stores for overwritten float gradients) while the
/// thread's next rows are prefetched into L2, so reads and writes overlap. Rows holding a
/// non-finite logit take an exact slower path (Eigen 3.4 does not vectorise `select`).
/// Per-thread scratch of two V-rows, no `[N, V]` temporary beyond the gradient the caller
/// asked for (pass a `GradientOut` over a row block to stream rows in chunks: rows are
/// independent). Arithmetic in float (double for double logits) with vectorised Eigen array
/// code, float sums within 2048-entry chunks and double across chunks; bfloat16 logits are
/// widened to float row by row and the gradient is rounded back to bfloat16. Rows run in
/// parallel (OpenMP); per-row values are combined in row order, so results are identical for
/// any thread count.
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
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <cmath>
#include <limits>
#include <string>

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
    static const Entry table[] = {
        {"forward_kl", Divergence::ForwardKL}, {"fkl", Divergence::ForwardKL},
        {"kl", Divergence::ForwardKL},         {"reverse_kl", Divergence::ReverseKL},
        {"rkl", Divergence::ReverseKL},        {"jsd", Divergence::JSD},
        {"skew_kl", Divergence::SkewKL},       {"skl", Divergence::SkewKL},
        {"skew_reverse_kl", Divergence::SkewReverseKL}, {"srkl", Divergence::SkewReverseKL},
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

/// One row of a dense divergence. z, y: the widened logit rows; returns L (without τ²).
/// `Safe` handles −inf logits exactly (zero probabilities) at the price of scalar selects.
template <bool Safe, class S, class A>
inline double dense_row_impl(const DistillOptions& o, const A* z, const A* y, A mz, A my,
                             Index V, Scratch<A>& ws, const RowGrad<S>& rg) {
    const A invT = static_cast<A>(1.0 / o.temperature);
    const CArrMap<A> za(z, V), ya(y, V);
    ArrMap<A> eq(ws.a.data(), V), ep(ws.b.data(), V);
    const double sq = static_cast<double>(exp_row<Safe>(z, V, mz, invT, ws.a.data()));
    const double sp = static_cast<double>(exp_row<Safe>(y, V, my, invT, ws.b.data()));
    const double lsq = std::log(sq), lsp = std::log(sp);
    // log q_j = z_j/τ + cq;  log p_j = y_j/τ + cp
    const A cq = static_cast<A>(-static_cast<double>(mz) * invT - lsq);
    const A cp = static_cast<A>(-static_cast<double>(my) * invT - lsp);
    const A iq = static_cast<A>(1.0 / sq), ip = static_cast<A>(1.0 / sp);
    const A zero(0);
    Divergence d = o.divergence;
    if (d == Divergence::JSD && o.beta == 0.0) d = Divergence::ForwardKL;
    if (d == Divergence::JSD && o.beta == 1.0) d = Divergence::ReverseKL;
    switch (d) {
        case Divergence::ForwardKL: {
            // L = Σ p (y − z)/τ + (cp − cq)
            const double a =
                keep_if<Safe>(ep > zero, ep * (ya - za)).template cast<double>().sum();
            const double L = a * ip * invT + static_cast<double>(cp) - static_cast<double>(cq);
            if (!std::isfinite(L)) return L;
            rg.set((eq * iq - ep * ip) * invT);
            return L;
        }
        case Divergence::ReverseKL: {
            const double b =
                keep_if<Safe>(eq > zero, eq * (za - ya)).template cast<double>().sum();
            const double L = b * iq * invT + static_cast<double>(cq) - static_cast<double>(cp);
            if (!std::isfinite(L)) return L;
            const A k = static_cast<A>(static_cast<double>(cq) - static_cast<double>(cp) - L);
            rg.set(keep_if<Safe>(eq > zero, eq * iq * ((za - ya) * invT + k)) * invT);
            return L;
        }
        case Divergence::JSD: {
            const A beta = static_cast<A>(o.beta), omb = static_cast<A>(1.0 - o.beta);
            // q, p normalised in place; KL(p‖M) summed, then ep ← log(q/M) (0 where q = 0)
            eq *= iq;
            ep *= ip;
            const double klp =
                keep_if<Safe>(ep > zero, ep * ((ya * invT + cp) - (beta * ep + omb * eq).log()))
                    .template cast<double>()
                    .sum();
            ep = keep_if<Safe>(eq > zero, (za * invT + cq) - (beta * ep + omb * eq).log());
            const double klq = (eq * ep).template cast<double>().sum();
            const double L = o.beta * klp + (1.0 - o.beta) * klq;
            if (!std::isfinite(L)) return L;
            const A kq = static_cast<A>(klq);
            rg.set(omb * eq * (ep - kq) * invT);
            return L;
        }
        case Divergence::SkewKL: {
            const A al = static_cast<A>(o.alpha), oma = static_cast<A>(1.0 - o.alpha);
            eq *= iq;
            ep *= ip;
            // L = Σ p (log p − log m), m = αp + (1−α)q;  g = −(1−α) p/m
            const double L =
                keep_if<Safe>(ep > zero, ep * ((ya * invT + cp) - (al * ep + oma * eq).log()))
                    .template cast<double>()
                    .sum();
            if (!std::isfinite(L)) return L;
            ep = keep_if<Safe>(ep > zero, -oma * ep / (al * ep + oma * eq));
            const A sg = (eq * ep).sum();
            rg.set(eq * (ep - sg) * invT);
            return L;
        }
        case Divergence::SkewReverseKL: {
            const A al = static_cast<A>(o.alpha), oma = static_cast<A>(1.0 - o.alpha);
            eq *= iq;
            ep *= ip;
            // m = (1−α)p + αq;  L = Σ q log(q/m);  ∂L/∂q = log(q/m) + 1 − αq/m
            ep = keep_if<Safe>(eq > zero, (za * invT + cq) - (oma * ep + al * eq).log());
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

/// Software prefetch of two chunks (one cache line at a time).
template <class A>
inline void prefetch_chunk(const A* a, const A* b, Index len) {
#if defined(__SSE2__)
    constexpr Index step = 64 / static_cast<Index>(sizeof(A));
    for (Index j = 0; j < len; j += step) {
        _mm_prefetch(reinterpret_cast<const char*>(a + j), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b + j), _MM_HINT_T0);
    }
#else
    (void)a;
    (void)b;
    (void)len;
#endif
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

/// Forces `x` to be rounded to its type here (keeps the compiler from fusing the product
/// that made it into a later subtraction).
#if defined(__GNUC__) && defined(__SSE2__)
#define RLPO_DISTILL_ROUNDED(x) __asm__ volatile("" : "+v"(x))
#elif defined(EIGEN_OPTIMIZATION_BARRIER)
#define RLPO_DISTILL_ROUNDED(x) EIGEN_OPTIMIZATION_BARRIER(x)
#else
#define RLPO_DISTILL_ROUNDED(x) (void)0
#endif

/// Pass-1 work on one chunk, in one vectorised sweep over both logit chunks: the chunk
/// maxima and minima (a ±inf shows up there).
template <class A>
inline void chunk_minmax(const A* z, const A* y, Index len, A& zmax, A& ymax, A& zmin,
                         A& ymin) {
    namespace ei = Eigen::internal;
    using P = Packet<A>;
    constexpr Index W = kPacket<A>;
    constexpr A inf = std::numeric_limits<A>::infinity();
    const Index lv = len - len % W;
    zmax = ymax = -inf;
    zmin = ymin = inf;
    if (lv > 0) {
        P a = ei::ploadu<P>(z), b = ei::ploadu<P>(y);
        P pzx = a, pzn = a, pyx = b, pyn = b;
        for (Index j = W; j < lv; j += W) {
            a = ei::ploadu<P>(z + j);
            b = ei::ploadu<P>(y + j);
            pzx = ei::pmax(pzx, a);
            pzn = ei::pmin(pzn, a);
            pyx = ei::pmax(pyx, b);
            pyn = ei::pmin(pyn, b);
        }
        zmax = ei::predux_max(pzx);
        zmin = ei::predux_min(pzn);
        ymax = ei::predux_max(pyx);
        ymin = ei::predux_min(pyn);
    }
    for (Index j = lv; j < len; ++j) {
        zmax = std::max(zmax, z[j]);
        zmin = std::min(zmin, z[j]);
        ymax = std::max(ymax, y[j]);
        ymin = std::min(ymin, y[j]);
    }
}

/// Pass-1 exponentials of one chunk in one sweep: eq = exp((z − zmax)/τ), ep = exp((y −
/// ymax)/τ) stored, their sums, and (Mode 1) Σ ep (y − z) or (Mode 2) Σ eq (z − y).
template <int Mode, class A>
inline void chunk_exp(const A* z, const A* y, Index len, A zmax, A ymax, A invT, A* eq, A* ep,
                      double& sq, double& sp, double& sx) {
    namespace ei = Eigen::internal;
    using P = Packet<A>;
    constexpr Index W = kPacket<A>;
    const Index lv = len - len % W;
    const P mz = ei::pset1<P>(zmax), my = ei::pset1<P>(ymax), it = ei::pset1<P>(invT);
    P s1 = ei::pset1<P>(A(0)), s2 = s1, s3 = s1;
    for (Index j = 0; j < lv; j += W) {
        const P a = ei::ploadu<P>(z + j), b = ei::ploadu<P>(y + j);
        const P ea = ei::pexp(ei::pmul(ei::psub(a, mz), it));
        const P eb = ei::pexp(ei::pmul(ei::psub(b, my), it));
        ei::pstoreu(eq + j, ea);
        ei::pstoreu(ep + j, eb);
        s1 = ei::padd(s1, ea);
        s2 = ei::padd(s2, eb);
        if constexpr (Mode == 1) s3 = ei::pmadd(eb, ei::psub(b, a), s3);
        if constexpr (Mode == 2) s3 = ei::pmadd(ea, ei::psub(a, b), s3);
    }
    A t1 = ei::predux(s1), t2 = ei::predux(s2), t3 = ei::predux(s3);
    for (Index j = lv; j < len; ++j) {
        const A ea = std::exp((z[j] - zmax) * invT), eb = std::exp((y[j] - ymax) * invT);
        eq[j] = ea;
        ep[j] = eb;
        t1 += ea;
        t2 += eb;
        if constexpr (Mode == 1) t3 += eb * (y[j] - z[j]);
        if constexpr (Mode == 2) t3 += ea * (z[j] - y[j]);
    }
    sq = static_cast<double>(t1);
    sp = static_cast<double>(t2);
    sx = static_cast<double>(t3);
}

/// The fast path for rows without −inf / NaN / +inf: one online pass over both rows in
/// L1-sized chunks (per-chunk max and min, exponentials stored to the work rows, per-chunk
/// sums and the forward / reverse KL value terms, all in one vectorised sweep per chunk),
/// then one pass per chunk that writes the gradient (forward / reverse KL) straight from
/// registers, or, for the other divergences, one fused sweep per (cache-resident) chunk that
/// normalises q and p and accumulates the value terms, followed by the gradient pass.
/// Returns false, with nothing written, when the row holds a non-finite logit: the caller
/// then takes the safe path.
template <class S, class A>
inline bool dense_row_online(const DistillOptions& o, const A* z, const A* y, Index V,
                             Scratch<A>& ws, const RowGrad<S>& rg, double& L_out) {
    namespace ei = Eigen::internal;
    using P = Packet<A>;
    constexpr Index C = kRowChunk;
    const Index nc = (V + C - 1) / C;
    const A invT = static_cast<A>(1.0 / o.temperature);
    Divergence d = o.divergence;
    if (d == Divergence::JSD && o.beta == 0.0) d = Divergence::ForwardKL;
    if (d == Divergence::JSD && o.beta == 1.0) d = Divergence::ReverseKL;
    ws.cz.resize(static_cast<std::size_t>(nc));
    ws.cy.resize(static_cast<std::size_t>(nc));
    ws.cs.resize(static_cast<std::size_t>(nc));
    ws.ct.resize(static_cast<std::size_t>(nc));
    ws.cx.resize(static_cast<std::size_t>(nc));
    double mz = -std::numeric_limits<double>::infinity(), my = mz;
    for (Index k = 0; k < nc; ++k) {
        const Index off = k * C, len = std::min(C, V - off);
        // fetch the next chunks while this one is computed (memory overlaps compute)
        if (k + 1 < nc) prefetch_chunk(z + off + C, y + off + C, std::min(C, V - off - C));
        A zmax, ymax, zmin, ymin;
        chunk_minmax(z + off, y + off, len, zmax, ymax, zmin, ymin);
        // +inf (max) or −inf (min) anywhere: leave it to the safe path; a NaN shows up as a
        // NaN chunk sum below (and a NaN max)
        if (!(std::abs(zmax) < std::numeric_limits<A>::infinity()) ||
            !(std::abs(ymax) < std::numeric_limits<A>::infinity()) ||
            !(zmin > -std::numeric_limits<A>::infinity()) ||
            !(ymin > -std::numeric_limits<A>::infinity()))
            return false;
        const auto kk = static_cast<std::size_t>(k);
        A* eq = ws.a.data() + off;
        A* ep = ws.b.data() + off;
        // float sums within a chunk (vectorised), double across chunks
        if (d == Divergence::ForwardKL)
            chunk_exp<1>(z + off, y + off, len, zmax, ymax, invT, eq, ep, ws.cs[kk], ws.ct[kk],
                         ws.cx[kk]);
        else if (d == Divergence::ReverseKL)
            chunk_exp<2>(z + off, y + off, len, zmax, ymax, invT, eq, ep, ws.cs[kk], ws.ct[kk],
                         ws.cx[kk]);
        else
            chunk_exp<0>(z + off, y + off, len, zmax, ymax, invT, eq, ep, ws.cs[kk], ws.ct[kk],
                         ws.cx[kk]);
        ws.cz[kk] = static_cast<double>(zmax);
        ws.cy[kk] = static_cast<double>(ymax);
        if (!std::isfinite(ws.cs[kk] + ws.ct[kk] + ws.cx[kk])) return false;  // a NaN logit
        mz = std::max(mz, ws.cz[kk]);
        my = std::max(my, ws.cy[kk]);
    }
    // Merge the chunks: factor_k = exp((m_k − m)/τ)
    double sq = 0, sp = 0, x = 0;
    for (Index k = 0; k < nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        ws.cz[kk] = std::exp((ws.cz[kk] - mz) * invT);
        ws.cy[kk] = std::exp((ws.cy[kk] - my) * invT);
        sq += ws.cs[kk] * ws.cz[kk];
        sp += ws.ct[kk] * ws.cy[kk];
        x += ws.cx[kk] * (d == Divergence::ForwardKL ? ws.cy[kk] : ws.cz[kk]);
    }
    const double cq = -mz * invT - std::log(sq), cp = -my * invT - std::log(sp);
    if (d == Divergence::ForwardKL) {
        const double L = x / sp * invT + cp - cq;
        L_out = L;
        if (!std::isfinite(L)) return true;
        for (Index k = 0; k < nc; ++k) {
            const Index off = k * C, len = std::min(C, V - off);
            const auto kk = static_cast<std::size_t>(k);
            const A fq = static_cast<A>(ws.cz[kk] / sq * invT);
            ws.prefetch_next(off, len);
            const A fp = static_cast<A>(ws.cy[kk] / sp * invT);
            const A* ea = ws.a.data() + off;
            const A* eb = ws.b.data() + off;
            const P pq = ei::pset1<P>(fq), pp = ei::pset1<P>(fp);
            rg.template set_packets<A>(
                off, len,
                [&](Index j) {
                    return ei::psub(ei::pmul(ei::ploadu<P>(ea + j), pq),
                                    ei::pmul(ei::ploadu<P>(eb + j), pp));
                },
                [&](Index j) { return ea[j] * fq - eb[j] * fp; },
                CArrMap<A>(ea, len) * fq - CArrMap<A>(eb, len) * fp);
        }
        return true;
    }
    if (d == Divergence::ReverseKL) {
        const double L = x / sq * invT + cq - cp;
        L_out = L;
        if (!std::isfinite(L)) return true;
        const A kc = static_cast<A>(cq - cp - L);
        const P pk = ei::pset1<P>(kc), pit = ei::pset1<P>(invT);
        for (Index k = 0; k < nc; ++k) {
            const Index off = k * C, len = std::min(C, V - off);
            const auto kk = static_cast<std::size_t>(k);
            ws.prefetch_next(off, len);
            const A fq = static_cast<A>(ws.cz[kk] / sq * invT);
            const A* ea = ws.a.data() + off;
            const A* zc = z + off;
            const A* yc = y + off;
            const P pq = ei::pset1<P>(fq);
            rg.template set_packets<A>(
                off, len,
                [&](Index j) {
                    const P t = ei::pmadd(ei::psub(ei::ploadu<P>(zc + j), ei::ploadu<P>(yc + j)),
                                          pit, pk);
                    return ei::pmul(ei::pmul(ei::ploadu<P>(ea + j), pq), t);
                },
                [&](Index j) { return ea[j] * fq * ((zc[j] - yc[j]) * invT + kc); },
                CArrMap<A>(ea, len) * fq *
                    ((CArrMap<A>(zc, len) - CArrMap<A>(yc, len)) * invT + kc));
        }
        return true;
    }
    // Other divergences: per chunk (in cache), normalise q and p, accumulate the value and the
    // sums the gradient needs, and leave the per-entry factor g_j in the p row; then one pass
    // per chunk writes q_j (g_j − s)/τ.
    const A cqa = static_cast<A>(cq), cpa = static_cast<A>(cp);
    const A beta = static_cast<A>(o.beta), omb = static_cast<A>(1.0 - o.beta);
    const A al = static_cast<A>(o.alpha), oma = static_cast<A>(1.0 - o.alpha);
    // sign(d) without a (scalar) select: clamp(d / FLT_MIN, −1, 1), exact ±1 for |d| ≥ FLT_MIN
    const A big = A(1) / std::numeric_limits<A>::min();
    if (ws.t.size() < C) ws.t.resize(C);
    double L1 = 0.0, L2 = 0.0;             // value parts; L2 = Σ q g (or KL(q‖M))
    constexpr Index W = kPacket<A>;
    for (Index k = 0; k < nc; ++k) {
        const Index off = k * C, len = std::min(C, V - off);
        const auto kk = static_cast<std::size_t>(k);
        ArrMap<A> eq(ws.a.data() + off, len), ep(ws.b.data() + off, len), tmp(ws.t.data(), len);
        const CArrMap<A> zc(z + off, len), yc(y + off, len);
        const A fq = static_cast<A>(ws.cz[kk] / sq), fp = static_cast<A>(ws.cy[kk] / sp);
        if (d == Divergence::JSD || d == Divergence::TVD) {
            // one fused sweep: q, p normalised in place, value terms, g_j into the p row
            A* qa = ws.a.data() + off;
            A* pb = ws.b.data() + off;
            const A* zr = z + off;
            const A* yr = y + off;
            const Index lv = len - len % W;
            const P pq = ei::pset1<P>(fq), pp = ei::pset1<P>(fp);
            P s1 = ei::pset1<P>(A(0)), s2 = s1;
            A t1 = 0, t2 = 0;
            if (d == Divergence::JSD) {
                const P pbeta = ei::pset1<P>(beta), pomb = ei::pset1<P>(omb);
                const P pit = ei::pset1<P>(invT), pcq = ei::pset1<P>(cqa),
                        pcp = ei::pset1<P>(cpa);
                for (Index j = 0; j < lv; j += W) {
                    const P q = ei::pmul(ei::ploadu<P>(qa + j), pq);
                    const P p = ei::pmul(ei::ploadu<P>(pb + j), pp);
                    const P lm = ei::plog(ei::padd(ei::pmul(pbeta, p), ei::pmul(pomb, q)));
                    const P lp = ei::pmadd(ei::ploadu<P>(yr + j), pit, pcp);
                    const P r = ei::psub(ei::pmadd(ei::ploadu<P>(zr + j), pit, pcq), lm);
                    s1 = ei::pmadd(p, ei::psub(lp, lm), s1);
                    s2 = ei::pmadd(q, r, s2);
                    ei::pstoreu(qa + j, q);
                    ei::pstoreu(pb + j, r);
                }
                for (Index j = lv; j < len; ++j) {
                    const A q = qa[j] * fq, p = pb[j] * fp;
                    const A lm = std::log(beta * p + omb * q);
                    const A r = (zr[j] * invT + cqa) - lm;
                    t1 += p * ((yr[j] * invT + cpa) - lm);
                    t2 += q * r;
                    qa[j] = q;
                    pb[j] = r;
                }
                L1 += static_cast<double>(ei::predux(s1) + t1);
            } else {
                const P pbig = ei::pset1<P>(big), one = ei::pset1<P>(A(1)),
                        mone = ei::pset1<P>(A(-1)), half = ei::pset1<P>(A(0.5));
                for (Index j = 0; j < lv; j += W) {
                    P q = ei::pmul(ei::ploadu<P>(qa + j), pq);
                    P p = ei::pmul(ei::ploadu<P>(pb + j), pp);
                    // q and p rounded before the difference (no fused multiply-subtract):
                    // sign(q − p) must be exactly 0 where q = p
                    RLPO_DISTILL_ROUNDED(q);
                    RLPO_DISTILL_ROUNDED(p);
                    const P t = ei::psub(q, p);
                    const P g = ei::pmul(half, ei::pmin(ei::pmax(ei::pmul(t, pbig), mone), one));
                    s1 = ei::padd(s1, ei::pabs(t));
                    s2 = ei::pmadd(q, g, s2);
                    ei::pstoreu(qa + j, q);
                    ei::pstoreu(pb + j, g);
                }
                for (Index j = lv; j < len; ++j) {
                    A q = qa[j] * fq, p = pb[j] * fp;
                    RLPO_DISTILL_ROUNDED(q);
                    RLPO_DISTILL_ROUNDED(p);
                    const A t = q - p;
                    const A g = A(0.5) * std::min(std::max(t * big, A(-1)), A(1));
                    t1 += std::abs(t);
                    t2 += q * g;
                    qa[j] = q;
                    pb[j] = g;
                }
                L1 += 0.5 * static_cast<double>(ei::predux(s1) + t1);
            }
            L2 += static_cast<double>(ei::predux(s2) + t2);
            continue;
        }
        eq *= fq;
        ep *= fp;
        switch (d) {
            case Divergence::SkewKL:
                tmp = al * ep + oma * eq;  // m
                L1 += static_cast<double>((ep * ((yc * invT + cpa) - tmp.log())).sum());
                ep = -oma * ep / tmp;
                L2 += static_cast<double>((eq * ep).sum());
                break;
            case Divergence::SkewReverseKL:
                tmp = oma * ep + al * eq;  // m
                ep = (zc * invT + cqa) - tmp.log();  // log(q/m)
                L1 += static_cast<double>((eq * ep).sum());
                ep -= al * eq / tmp;
                L2 += static_cast<double>((eq * ep).sum());
                break;
            default: break;
        }
    }
    double L = L1;
    A shift = static_cast<A>(L2), factor = invT;
    if (d == Divergence::JSD) {
        L = o.beta * L1 + (1.0 - o.beta) * L2;
        factor = omb * invT;
    }
    L_out = L;
    if (!std::isfinite(L)) return true;
    const P psh = ei::pset1<P>(shift), pf = ei::pset1<P>(factor);
    for (Index k = 0; k < nc; ++k) {
        const Index off = k * C, len = std::min(C, V - off);
        ws.prefetch_next(off, len);
        const A* ea = ws.a.data() + off;
        const A* eb = ws.b.data() + off;
        rg.template set_packets<A>(
            off, len,
            [&](Index j) {
                return ei::pmul(ei::pmul(ei::ploadu<P>(ea + j),
                                         ei::psub(ei::ploadu<P>(eb + j), psh)),
                                pf);
            },
            [&](Index j) { return ea[j] * (eb[j] - shift) * factor; },
            CArrMap<A>(ea, len) * (CArrMap<A>(eb, len) - shift) * factor);
    }
    return true;
}

template <class S, class A>
inline double dense_row(const DistillOptions& o, const A* z, const A* y, Index V, Scratch<A>& ws,
                        const RowGrad<S>& rg, RowError& err) {
    double L = 0.0;
    if (dense_row_online<S, A>(o, z, y, V, ws, rg, L)) return L;
    const A mz = check_row(z, V, "student_logits", err);
    if (err.set()) return 0.0;
    const A my = check_row(y, V, "teacher_logits", err);
    if (err.set()) return 0.0;
    return dense_row_impl<true, S, A>(o, z, y, mz, my, V, ws, rg);
}

}  // namespace detail

/// Divergence between teacher and student logits (`[N, V]`, same shape and type: float,
/// double or Eigen::bfloat16), rows selected and aggregated by the `[B, T]` row `mask`
/// (B·T = N) under `norm`. Gradient w.r.t. `student_logits`.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const DistillOptions& opts = {},
    const Normalizer& norm = {}, const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
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
    const auto pass = detail::drive_rows<S, A>(
        fn, plan, N, V, g, t2,
        [&](Index n, detail::Scratch<A>& ws, const detail::RowGrad<S>& rg,
            detail::RowError& err, double&) -> double {
            const A* zr = detail::widen<A, S>(z, n, ws.z);
            const A* yr = detail::widen<A, S>(y, n, ws.y);
            const bool more = n + 1 < N;
            ws.next_z = more ? reinterpret_cast<const char*>(z.row(n + 1).data()) : nullptr;
            ws.next_y = more ? reinterpret_cast<const char*>(y.row(n + 1).data()) : nullptr;
            ws.next_elem = sizeof(S);
            return detail::dense_row<S, A>(opts, zr, yr, V, ws, rg, err);
        });
    res.value = g.coef() * pass.value;
    res.metrics.add(to_string(opts.divergence), pass.metric, pass.count);
    return res;
}

/// All rows, token-mean (no mask).
template <class DS, class DT>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const DistillOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    const Mat<float> ones = Mat<float>::Ones(student_logits.rows(), 1);
    return divergence(student_logits, teacher_logits, ones, opts, Normalizer{}, out);
}

#define RLPO_DISTILL_NAMED(NAME, KIND)                                                         \
    template <class DS, class DT, class DM>                                                    \
    Result<::rlpo::detail::scalar_t<DS>> NAME(                                                 \
        const Eigen::MatrixBase<DS>& student_logits,                                           \
        const Eigen::MatrixBase<DT>& teacher_logits, const Eigen::MatrixBase<DM>& mask,        \
        DistillOptions opts = {}, const Normalizer& norm = {},                                 \
        const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {                           \
        opts.divergence = KIND;                                                                \
        return divergence(student_logits, teacher_logits, mask, opts, norm, out);              \
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
