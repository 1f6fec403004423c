#pragma once
/// \file
/// Generalised Jensen–Shannon divergence β KL(p‖M) + (1−β) KL(q‖M), M = βp + (1−β)q,
/// ∂/∂z = (1−β) q (r − Σ q r)/τ with r = log q − log M: the math of the kind in the
/// vocabulary pipeline (internal; divergence/detail/kind_math.hpp has the interface). Three
/// stages; stage 1 sums KL(p‖q) (so that stage 2 reads no teacher logits), and long rows take
/// the lean value sweep (`kLeanCapable`: `lean_ratio`, `lean_log`). β = 0 and 1 run as
/// forward and reverse KL (`dense_rows`).

#include <rlpo/divergence/detail/kind_math.hpp>

#include <cmath>
#include <type_traits>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::JSD> : GradThreeStage {
    static constexpr bool kLean = true;
    static constexpr int kStage2LogitRows = 1;  // the student's

    /// Σ e_p (dy − dz), for KL(p‖q) (as forward KL); stores e_p
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T stage1(const O& o, T, T ep, T dz, T dy, T& s3) {
        s3 = o.madd(ep, o.sub(dy, dz), s3);
        return ep;
    }
    /// Σ e_p (log2 e_p − log2 e_q) from the exponent arguments, for KL(p‖q)
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage1_fused(const O& o, T ep, T tz, T ty, T& s3) {
        s3 = o.madd(ep, o.sub(ty, tz), s3);
    }
    template <bool Fused>
    static EIGEN_ALWAYS_INLINE double merge1(double x, const Merge1Chunk& k) {
        constexpr double kLn2 = 0.6931471805599453;
        using std::fma;
        if constexpr (Fused)
            // Σ p log(p/q) in nats: the chunk's sum of ep (log2 ep − log2 eq), whose
            // exponents carry δy_k − δz_k, plus the shift of the chunk maxima
            return fma(
                k.ey, fma(kLn2, k.s2, k.s1 * fma(k.dyk - k.dzk, k.invT, -((k.dly - k.dlz) * kLn2))),
                x);
        else  // as forward KL
            return fma(k.ey * k.invT, fma(k.s1, k.dyk - k.dzk, k.s2), x);
    }
    /// KL(p‖q)
    static EIGEN_ALWAYS_INLINE void merge1_row(double x, const Merge1Row& r, double& kpq) {
        kpq = x / r.sp + r.lsq - r.lsp;
    }
    /// M = βp + (1−β)q = e_q·(1−β)f_q + e_p·βf_p; r = log q − log M; v1 = Σ e_p r (× f_p),
    /// v2 = Σ e_q r (× f_q). KL(p‖M) = KL(p‖q) + Σ p r, KL(p‖q) from stage 1: the teacher's
    /// logits are not read again.
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage2(const O& o, T eq, T ep, T zv, T, T& o2, T& v1, T& v2) {
        const T lm = o.log(o.madd(eq, o.set1(o.k.mq), o.mul(ep, o.set1(o.k.mp))));
        const T r = o.sub(o.lin(zv, o.k.cq), lm);
        v1 = o.madd(ep, r, v1);
        v2 = o.madd(eq, r, v2);
        o2 = r;
    }
    /// the lean sweep: l = log((1−β) + c_k e_p/e_q) = −r
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T lean_ratio(const O& o, T eq, T ep) {
        return o.log(o.madd(o.div(ep, eq), o.set1(o.k.ck), o.set1(o.k.omb)));
    }
    /// the lean sweep's log form: l = log M − log q, log q = t·ln 2 + fl(log f_q) (`lqk`), t
    /// the student's exponent argument as stage 1 formed it
    template <class O, class T, class A>
    static EIGEN_ALWAYS_INLINE T lean_log(const O& o, T eq, T ep, T t, A lqk) {
        constexpr A kLn2f = A(0.6931471805599453);
        const T lq = o.madd(t, o.set1(kLn2f), o.set1(lqk));
        const T m = o.madd(eq, o.set1(o.k.mq), o.mul(ep, o.set1(o.k.mp)));
        return o.sub(o.log(m), lq);
    }
    /// the sums are of e_p·(…) and e_q·(…): × f_p, f_q
    static EIGEN_ALWAYS_INLINE double v1_weight(double, double f1) { return f1; }
    static EIGEN_ALWAYS_INLINE double v2_weight(double f0, double) { return f0; }
    template <class A>
    static EIGEN_ALWAYS_INLINE bool finish2(Finish2& f) {
        // KL(p‖M) = KL(p‖q) + Σ p r, KL(q‖M) = Σ q r, r = log q − log M
        f.L = std::fma(f.beta, f.kpq + f.u1 + f.rp, f.omb * (f.u2 + f.rq));
        // The two sums cancel where the student lies far below the teacher (KL(p‖q) ≫ the
        // JSD, which is at most log 2 / h(β)): the result would carry the rounding of
        // KL(p‖q), about ε·KL(p‖q) (student logits 1e6 below gave 1e−2 relative in float,
        // 1e9 below a wrong sign). Such rows take the exact path, which sums
        // Σ p (log p − log M) term by term. The bound keeps the relative error of the fast
        // value under about 2^8 ε (float) / 2^24 ε (double); ordinary rows (KL(p‖q) ≲
        // 1/(β(1−β)) times the JSD) never reach it.
        constexpr double kCancel = std::is_same<A, float>::value ? 256.0 : 16777216.0;
        if (f.kpq > 1.0 / 1024 && f.kpq > kCancel * f.L) return false;
        // the lean sweep's gradient factor is l = −r: q (r − Σ q r) = −q (l − Σ q l)
        f.factor *= f.lean ? -f.omb : f.omb;
        return true;
    }
    template <class X>
    static EIGEN_ALWAYS_INLINE double exact(const X& x) {
        using A = typename X::Scalar;
        // log M from log p and log q (`log_mix`); q, p normalised in place; KL(p‖M)
        // summed, then e_p ← log(q/M) (0 where q = 0)
        const double beta = x.o.beta;
        const auto lm = x.log_mix(beta, 1.0 - beta);
        x.normalise();
        const double klp = x.p_log_ratio(lm);
        x.ep = x.keep(x.eq > A(0), x.lq() - lm);
        const double klq = (x.eq * x.ep).template cast<double>().sum();
        const double L = beta * klp + (1.0 - beta) * klq;
        if (!std::isfinite(L)) return L;
        const A kq = static_cast<A>(klq), omb = static_cast<A>(1.0 - beta);
        x.rg.set(omb * x.eq * (x.ep - kq) * x.invT);
        return L;
    }
};

}  // namespace rlpo::distill::detail
