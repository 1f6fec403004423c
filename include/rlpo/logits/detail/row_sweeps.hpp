#pragma once
/// \file
/// The two sweeps of one logit row of `token_logps` (internal).
///
/// Forward (`ForwardSweep`, `forward_row`): one read of the row in chunks of `kChunk` entries.
/// Per chunk: its maximum m_k, then s_k = Σ e^{(x−m_k)/T}
/// and, for the entropy, t_k = Σ e^{(x−m_k)/T}·(x − m_k), summed in the arithmetic type A
/// (float, or double for double logits). Chunks are merged online in double: with M the running
/// maximum, S = Σ_k e^{(m_k−M)/T} s_k and Q = Σ_k e^{(m_k−M)/T} (t_k + s_k (m_k − M)), rescaled
/// when M grows. The row's results are M, ln S and Q/(S·T) = Σ_j p_j (x_j − M)/T. The sweep is
/// software-pipelined: the loop that sums chunk k (from L1) also takes the maximum of chunk
/// k + 1 (its first read from memory) and prefetches chunk k + 2, so the reads overlap the
/// exponentials instead of alternating with them.
///
/// Backward (`BackwardSweep`): one read of the row and one write of its gradient. The gradient
/// of ⟨g, log p_y⟩ + ⟨h, H⟩ w.r.t. the row is e_j·(α + β·(x_j − M)) with e_j = e^{(x_j−M)/T}
/// (α, β fold g, h, 1/T, 1/S and the sink's coefficient, see token_logps.hpp); the caller
/// overwrites the label's entry with its value computed in double. Overwritten float rows
/// (aligned) stream each packet out as it is formed, so the writes overlap the exponentials;
/// the chunk holding the label, and rows that are added to or of other types, are formed in an
/// L1 buffer and then written. Meanwhile the thread's next row is prefetched into L2, so its
/// forward sweep (in the fused call) or backward sweep reads it from the cache.
///
/// The exponential is `pexp2` of core/simd/fast_math.hpp for float (argument (x − m)·log2(e)/T)
/// and Eigen's `pexp` for double (argument (x − m)/T, set to exactly 0 below −745). Both give
/// exactly 0 for a −inf logit and NaN for a NaN; the entropy's product e·(x − m) takes
/// max(x − m, lo) with lo far enough below that e is 0 there, so a −inf logit adds 0, not NaN.
/// Every product that meets a sum is an explicit multiply-add (`pmadd`, `std::fma`), so the
/// copies of a sweep (with and without the entropy) round alike.

#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/fast_math.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/core/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace rlpo::logits::detail {

namespace simd = ::rlpo::detail::simd;

/// Chunk length of the sweeps: a chunk of logits and its gradient buffer stay in L1.
inline constexpr Index kChunk = 2048;

/// The exponential of the sweeps for arithmetic type A (see the file comment).
template <class A>
struct Exp;

template <>
struct Exp<float> {
    using P = simd::Packet<float>;
    /// multiplier of (x − m) in the argument: log2(e)/T
    static double factor(double temperature) { return 1.4426950408889634 / temperature; }
    static P packet(const P& t) { return ::rlpo::detail::pexp2(t); }
    /// arguments at or below this give exactly 0
    static constexpr float lo = -200.0f;
};

template <>
struct Exp<double> {
    using P = simd::Packet<double>;
    static double factor(double temperature) { return 1.0 / temperature; }
    static P packet(const P& t) {
        // Eigen's pexp clamps its argument (≈ 1e−308 at −inf): give exactly 0 below −745,
        // where e^t is 0 in double anyway. NaN compares false and stays NaN.
        return simd::pandnot(simd::pexp(t), simd::pcmp_lt(t, simd::set1<double>(-745.0)));
    }
    static constexpr double lo = -800.0;
};

/// Packet of entries [k, k + width) of p, `pad` past n (never reads beyond p[n − 1]).
template <class A>
inline simd::Packet<A> load_pad(const A* p, Index k, Index n, A pad) {
    constexpr Index W = simd::width<A>;
    if (k + W <= n) return Eigen::internal::ploadu<simd::Packet<A>>(p + k);
    alignas(64) A buf[W];
    for (Index j = 0; j < W; ++j) buf[j] = k + j < n ? p[k + j] : pad;
    return Eigen::internal::ploadu<simd::Packet<A>>(buf);
}

/// Maximum of x[0, len) (len ≥ 1); NaN handling is left to the sums (a NaN reaches them).
template <class A>
inline A chunk_max(const A* x, Index len) {
    namespace ei = Eigen::internal;
    using P = simd::Packet<A>;
    constexpr Index W = simd::width<A>;
    constexpr A ninf = -std::numeric_limits<A>::infinity();
    P m0 = simd::set1<A>(ninf), m1 = m0;
    Index j = 0;
    for (; j + 2 * W <= len; j += 2 * W) {
        m0 = simd::pmax(m0, ei::ploadu<P>(x + j));
        m1 = simd::pmax(m1, ei::ploadu<P>(x + j + W));
    }
    for (; j < len; j += W) m0 = simd::pmax(m0, load_pad<A>(x, j, len, ninf));
    return ei::predux_max(simd::pmax(m0, m1));
}

/// What the forward sweep of one row found.
struct RowStats {
    double max = 0.0;         ///< M = max_j x_j
    double log_sum = 0.0;     ///< ln S, S = Σ_j e^{(x_j − M)/T}
    double mean_shift = 0.0;  ///< Σ_j p_j (x_j − M)/T (with the entropy; else 0)
    bool ok = true;           ///< false: a NaN, a +inf, or every entry −inf (see classify_row)
};

/// The forward sweep of one row in flight: the running M, S, Q (file comment) and the
/// constants of the temperature. `step` takes the row's chunks in order; `finish` gives the
/// row's statistics; `forward_row` runs them over a whole row.
template <class A, bool Ent>
class ForwardSweep {
public:
    explicit ForwardSweep(double temperature)
        : a_(static_cast<A>(Exp<A>::factor(temperature))), inv_t_(1.0 / temperature) {}

    /// Chunk c[0, len) of the row (after the chunks before it), whose maximum `cm` is known
    /// (`chunk_max`). The next chunk nx[0, nlen) (nlen may be 0) has its maximum taken in the
    /// same loop, into `next_max`: its reads from memory overlap this chunk's exponentials
    /// (from L1), so a row is swept at the memory's pace rather than at the sum of the two.
    /// False once the row is bad.
    bool step(const A* c, Index len, A cm, const A* nx, Index nlen, A& next_max,
              A* e_out = nullptr) {
        namespace ei = Eigen::internal;
        using P = simd::Packet<A>;
        constexpr Index W = simd::width<A>;
        constexpr A ninf = -std::numeric_limits<A>::infinity();
        if (!ok_) return false;
        if (!(cm > ninf) || !(cm < -ninf)) {
            // −inf, +inf or NaN: a chunk of only −inf adds nothing; anything else is bad
            const bool all_ninf =
                Eigen::Map<const Eigen::Array<A, Eigen::Dynamic, 1>>(c, len).cwiseEqual(ninf).all();
            ok_ = cm == ninf && all_ninf;
            if (ok_ && nlen > 0) next_max = chunk_max<A>(nx, nlen);
            return ok_;
        }
        const P va = simd::set1<A>(a_), vlo = simd::set1<A>(Exp<A>::lo / a_);
        const P vm = simd::set1<A>(cm);
        P s0 = simd::set1<A>(A(0)), s1 = s0, t0 = s0, t1 = s0;
        P n0 = simd::set1<A>(ninf), n1 = n0;  // the next chunk's running maximum
        // the next chunk's packet pairs read in this loop (it is never longer than this one)
        const Index nfull = nlen - nlen % (2 * W);
        Index j = 0;
        for (; j + 2 * W <= len; j += 2 * W) {
            if (j < nfull) {
                // and the chunk after the next one into L1 (a whole chunk ahead of the reads)
                simd::prefetch_l1(nx + j + kChunk);
                simd::prefetch_l1(nx + j + kChunk + 64 / sizeof(A));
                n0 = simd::pmax(n0, ei::ploadu<P>(nx + j));
                n1 = simd::pmax(n1, ei::ploadu<P>(nx + j + W));
            }
            const P d0 = simd::psub(ei::ploadu<P>(c + j), vm);
            const P d1 = simd::psub(ei::ploadu<P>(c + j + W), vm);
            const P e0 = Exp<A>::packet(simd::pmul(d0, va));
            const P e1 = Exp<A>::packet(simd::pmul(d1, va));
            if (e_out) {
                ei::pstore(e_out + j, e0);
                ei::pstore(e_out + j + W, e1);
            }
            s0 = simd::padd(s0, e0);
            s1 = simd::padd(s1, e1);
            if constexpr (Ent) {
                t0 = ei::pmadd(e0, simd::pmax(d0, vlo), t0);
                t1 = ei::pmadd(e1, simd::pmax(d1, vlo), t1);
            }
        }
        for (; j < len; j += W) {
            const P d = simd::psub(load_pad<A>(c, j, len, ninf), vm);
            const P e = Exp<A>::packet(simd::pmul(d, va));
            if (e_out) ei::pstore(e_out + j, e);  // the buffer has room for whole packets
            s0 = simd::padd(s0, e);
            if constexpr (Ent) t0 = ei::pmadd(e, simd::pmax(d, vlo), t0);
        }
        if (nlen > 0) {
            // the pairs the loop did not reach (a short row tail) and the last partial packets
            for (Index k = std::min(nfull, j); k < nlen; k += W)
                n0 = simd::pmax(n0, load_pad<A>(nx, k, nlen, ninf));
            next_max = ei::predux_max(simd::pmax(n0, n1));
        }
        const double sk = static_cast<double>(ei::predux(simd::padd(s0, s1)));
        const double tk = Ent ? static_cast<double>(ei::predux(simd::padd(t0, t1))) : 0.0;
        const double mk = static_cast<double>(cm);
        if (mk > M_) {
            // rescale what was summed relative to the old maximum (nothing at the first chunk)
            if (S_ > 0.0) {
                const double r = std::exp((M_ - mk) * inv_t_);
                if constexpr (Ent) Q_ = r * std::fma(S_, M_ - mk, Q_);
                S_ *= r;
            }
            M_ = mk;
            S_ += sk;
            if constexpr (Ent) Q_ += tk;
        } else {
            const double f = std::exp((mk - M_) * inv_t_);
            if constexpr (Ent) Q_ = std::fma(f, std::fma(sk, mk - M_, tk), Q_);
            S_ = std::fma(f, sk, S_);
        }
        return true;
    }

    RowStats finish() const {
        RowStats st;
        if (!ok_ || !(M_ > -std::numeric_limits<double>::infinity()) || !std::isfinite(S_) ||
            !std::isfinite(Q_)) {
            st.ok = false;
            return st;
        }
        st.max = M_;
        st.log_sum = std::log(S_);
        st.mean_shift = Ent ? Q_ / S_ * inv_t_ : 0.0;
        return st;
    }

private:
    A a_;
    double inv_t_;
    double M_ = -std::numeric_limits<double>::infinity(), S_ = 0.0, Q_ = 0.0;
    bool ok_ = true;
};

/// The forward sweep of one whole row (file comment). `Ent`: also the entropy's sum.
/// With `e_out` (room for V entries rounded up to a packet, 64-byte aligned) and `cmax` (one
/// entry per chunk), the sweep also keeps each entry's e^{(x − m_k)/T} and each chunk's
/// maximum m_k, which the fused call's backward sweep then scales instead of recomputing the
/// exponentials (a chunk of only −inf keeps no exponentials: its maximum says so).
template <class A, bool Ent>
inline RowStats forward_row(const A* x, Index V, double temperature, A* e_out = nullptr,
                            A* cmax = nullptr) {
    ForwardSweep<A, Ent> f(temperature);
    const auto len_at = [&](Index off) { return V - off < kChunk ? V - off : kChunk; };
    A cm = chunk_max<A>(x, len_at(0));
    for (Index off = 0; off < V; off += kChunk) {
        const Index len = len_at(off), next = off + len;
        A next_max = A(0);
        if (cmax) cmax[off / kChunk] = cm;
        if (!f.step(x + off, len, cm, x + next, next < V ? len_at(next) : 0, next_max,
                    e_out ? e_out + off : nullptr))
            break;
        cm = next_max;
    }
    return f.finish();
}

/// Why a row failed its forward sweep: the first NaN or +inf column, or every entry −inf
/// (column −1). Called only for rows whose sweep failed.
template <class A>
inline const char* classify_row(const A* x, Index V, Index& col) {
    for (Index j = 0; j < V; ++j) {
        if (std::isnan(x[j])) {
            col = j;
            return "NaN logit (NaN logits are rejected)";
        }
        if (x[j] == std::numeric_limits<A>::infinity()) {
            col = j;
            return "+inf logit (the softmax is undefined)";
        }
    }
    col = -1;
    return "every logit is -inf (no distribution)";
}

/// Write `len` entries of `buf` (the row's gradient chunk) to `dst`: overwrite or add; float
/// rows that are overwritten and 16-byte aligned go out with streaming stores.
template <class S, class A>
inline void emit_chunk(S* dst, const A* buf, Index len, bool add) {
    if (add) {
        for (Index j = 0; j < len; ++j) dst[j] = static_cast<S>(static_cast<A>(dst[j]) + buf[j]);
        return;
    }
    if constexpr (simd::kStreamingStores && std::is_same<S, float>::value &&
                  std::is_same<A, float>::value) {
        if (reinterpret_cast<std::uintptr_t>(dst) % 16 == 0) {
            simd::stream_floats(dst, buf, len);
            return;
        }
    }
    for (Index j = 0; j < len; ++j) dst[j] = static_cast<S>(buf[j]);
}

/// The backward sweep of one row: what it needs (file comment). `chunk(off, len)` writes
/// entries [off, off + len) of dst (=, or +=) e_j·(α + β (x_j − M)), the label's entry replaced
/// by `grad_label`; `buf` holds kChunk entries, 64-byte aligned.
template <class A, bool Ent, class S>
struct BackwardSweep {
    const A* x = nullptr;
    double temperature = 1.0;
    A M = 0, alpha = 0, beta = 0;
    Index label = 0;
    A grad_label = 0;
    S* dst = nullptr;
    bool add = false;
    /// the thread's next row (null: none): prefetched into L2 as this row's chunks are written
    const A* next = nullptr;
    /// The forward sweep's e^{(x − m_k)/T} and chunk maxima (`forward_row`), or null: then
    /// each chunk's maximum and exponentials are recomputed here, with the same operations.
    const A* e = nullptr;
    const A* cmax = nullptr;

    void chunk(Index off, Index len, A* buf) const {
        namespace ei = Eigen::internal;
        using P = simd::Packet<A>;
        constexpr Index W = simd::width<A>;
        constexpr A ninf = -std::numeric_limits<A>::infinity();
        const A a = static_cast<A>(Exp<A>::factor(temperature));
        const P va = simd::set1<A>(a), vlo = simd::set1<A>(Exp<A>::lo / a);
        const A* c = x + off;
        // e_j = e^{(x_j − m_k)/T} · e^{(m_k − M)/T}: the chunk's own exponentials (what the
        // forward sweep formed) times one scale per chunk, folded into α and β
        const A cm = cmax ? cmax[off / kChunk] : chunk_max<A>(c, len);
        if (!(cm > ninf)) {  // a chunk of only −inf logits: probabilities and gradient 0
            const P z = simd::set1<A>(A(0));
            for (Index j = 0; j < len; j += W) simd::store_n<A>(buf, j, len, z);
            if (label >= off && label < off + len) buf[label - off] = grad_label;
            emit_chunk<S, A>(dst + off, buf, len, add);
            return;
        }
        const A scale = static_cast<A>(
            std::exp((static_cast<double>(cm) - static_cast<double>(M)) / temperature));
        const P vm = simd::set1<A>(M), vcm = simd::set1<A>(cm);
        const P val = simd::set1<A>(scale * alpha), vbe = simd::set1<A>(scale * beta);
        const A* ec = e ? e + off : nullptr;
        const auto term_at = [&](const P& xv, const A* ep) {
            const P ek =
                ep ? ei::ploadu<P>(ep) : Exp<A>::packet(simd::pmul(simd::psub(xv, vcm), va));
            if constexpr (Ent)
                return simd::pmul(ek, ei::pmadd(simd::pmax(simd::psub(xv, vm), vlo), vbe, val));
            return simd::pmul(ek, val);
        };
        // without the entropy the stored exponentials are all the fused call reads
        const auto xload = [&](Index j) {
            if constexpr (!Ent)
                if (ec) return simd::set1<A>(A(0));
            return ei::ploadu<P>(c + j);
        };
        const auto term = [&](Index j) { return term_at(xload(j), ec ? ec + j : nullptr); };
        const auto term_tail = [&](Index j) {
            return term_at(load_pad<A>(c, j, len, ninf), ec ? ec + j : nullptr);
        };
        Index j = 0;
        if constexpr (simd::kStreamingStores && std::is_same<S, float>::value &&
                      std::is_same<A, float>::value) {
            // overwritten float rows, packet-aligned, chunk without the label: each packet
            // is streamed out as it is formed, so the writes overlap the exponentials
            const bool label_here = label >= off && label < off + len;
            S* d = dst + off;
            if (!add && !label_here && reinterpret_cast<std::uintptr_t>(d) % sizeof(P) == 0) {
                for (; j + 2 * W <= len; j += 2 * W) {
                    if (next) {
                        simd::prefetch_l2(next + off + j);
                        simd::prefetch_l2(next + off + j + W);
                    }
                    simd::stream_packet(d + j, term(j));
                    simd::stream_packet(d + j + W, term(j + W));
                }
                if (j == len) return;
                for (Index k = j; k < len; k += W) simd::store_n<A>(buf, k, len, term_tail(k));
                for (Index k = j; k < len; ++k) d[k] = buf[k];
                return;
            }
        }
        for (; j + 2 * W <= len; j += 2 * W) {
            ei::pstore(buf + j, term(j));
            ei::pstore(buf + j + W, term(j + W));
        }
        for (; j < len; j += W) simd::store_n<A>(buf, j, len, term_tail(j));
        if (label >= off && label < off + len) buf[label - off] = grad_label;
        emit_chunk<S, A>(dst + off, buf, len, add);
    }

    void row(Index V, A* buf) const {
        for (Index off = 0; off < V; off += kChunk)
            chunk(off, V - off < kChunk ? V - off : kChunk, buf);
    }
};

}  // namespace rlpo::logits::detail
