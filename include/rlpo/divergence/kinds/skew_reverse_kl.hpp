#pragma once
/// \file
/// Skew reverse KL(q‖m), m = (1−α)p + αq (DistiLLM), ∂/∂z = q (g − Σ q g)/τ with
/// g = log(q/m) + 1 − αq/m: the math of the kind in the vocabulary pipeline (internal;
/// divergence/detail/kind_math.hpp has the interface). Three stages; the value sweep reads
/// the student's logits.

#include <rlpo/divergence/detail/kind_math.hpp>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::SkewReverseKL> : GradThreeStage {
    static constexpr int kStage2LogitRows = 1;  // the student's

    /// m = (1−α)p + αq; r = log(q/m); factor r − α q/m
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage2(const O& o, T eq, T ep, T zv, T, T& o2, T& v1, T& v2) {
        const T q = o.mul(eq, o.set1(o.k.fq)), p = o.mul(ep, o.set1(o.k.fp));
        const T m = o.add(o.mul(o.set1(o.k.oma), p), o.mul(o.set1(o.k.al), q));
        const T r = o.sub(o.lin(zv, o.k.cq), o.log(m));
        v1 = o.madd(q, r, v1);
        const T h = o.sub(r, o.div(o.times(o.set1(o.k.al), q), m));
        v2 = o.madd(q, h, v2);
        o2 = h;
    }
    /// the value lacks e·Σq = e (log q's row constant rounded to float, kFusedArg)
    template <class A>
    static EIGEN_ALWAYS_INLINE bool finish2(Finish2& f) {
        f.L = f.u1 + f.ecq;
        return true;
    }
    template <class X>
    static EIGEN_ALWAYS_INLINE double exact(const X& x) {
        using A = typename X::Scalar;
        // m = (1−α)p + αq (log m: `log_mix`);  L = Σ q log(q/m);  ∂L/∂q = log(q/m) + 1 −
        // αq/m
        const auto lm = x.log_mix(1.0 - x.o.alpha, x.o.alpha);
        x.normalise();
        x.ep = x.keep(x.eq > A(0), x.lq() - lm);
        const double L = (x.eq * x.ep).template cast<double>().sum();
        if (!std::isfinite(L)) return L;
        // g − 1 = log(q/m) − α q/m, with α q/m = exp(log α + log(q/m)) ≤ 1 (m ≥ αq): no
        // 0·inf at α = 0, where q/m overflows when p underflows (small τ)
        if (x.o.alpha > 0) {
            const A lal = static_cast<A>(std::log(x.o.alpha));
            x.ep = x.keep(x.eq > A(0), x.ep - (x.ep + lal).exp());
        }
        x.set_centred();
        return L;
    }
};

}  // namespace rlpo::distill::detail
