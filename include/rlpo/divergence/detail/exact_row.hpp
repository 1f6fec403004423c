#pragma once
/// \file
/// The exact row path of the dense divergences (internal): one row at a time with Eigen
/// array expressions, zero probabilities (−inf logits) handled exactly. The pipelined fast
/// path (divergence/detail/driver.hpp) sends here the rows it cannot take (non-finite logits, sums or
/// values), and its errors (NaN, +inf, all −inf) are found here.

#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <cmath>

namespace rlpo::distill::detail {

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
                             Scratch<A>& ws, const GradRow<S>& rg) {
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
            // m = (1−α)p + αq (log m: `log_mix`);  L = Σ q log(q/m);  ∂L/∂q = log(q/m) + 1 −
            // αq/m
            const ArrMap<A> lm = mix_row(ws, V);
            log_mix<A>(lm, ys * invT + cp, zs * invT + cq, 1.0 - o.alpha, o.alpha);
            eq *= iq;
            ep *= ip;
            ep = keep_if<Safe>(eq > zero, (zs * invT + cq) - lm);
            const double L = (eq * ep).template cast<double>().sum();
            if (!std::isfinite(L)) return L;
            // g − 1 = log(q/m) − α q/m, with α q/m = exp(log α + log(q/m)) ≤ 1 (m ≥ αq): no
            // 0·inf at α = 0, where q/m overflows when p underflows (small τ)
            if (o.alpha > 0) {
                const A lal = static_cast<A>(std::log(o.alpha));
                ep = keep_if<Safe>(eq > zero, ep - (ep + lal).exp());
            }
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
        case Divergence::ChiSquared: {
            // L = Σ q²/p − 1 = Σ q (r − 1), r = q/p = exp(log q − log p) (+inf where p = 0 < q:
            // an infinite divergence); ∂L/∂z = 2 q (h − Σ q h)/τ with h = r − 1
            eq *= iq;
            ep = keep_if<Safe>(eq > zero, ((zs - ys) * invT + (cq - cp)).exp() - A(1));
            const double L = (eq * ep).template cast<double>().sum();
            if (!std::isfinite(L)) return L;
            const A sg = (eq * ep).sum();
            rg.set(A(2) * eq * (ep - sg) * invT);
            return L;
        }
    }
    return 0.0;
}

/// The exact path for one row (non-finite logits, zero probabilities, errors).
template <class S, class A>
inline double dense_row_exact(const DistillOptions& o, const A* z, const A* y, Index V,
                              Scratch<A>& ws, const GradRow<S>& rg, RowError& err) {
    ws.ensure(V);
    const A mz = check_row(z, V, "student_logits", err);
    if (err.set()) {
        err.arg = 0;
        return 0.0;
    }
    const A my = check_row(y, V, "teacher_logits", err);
    if (err.set()) {
        err.arg = 1;
        return 0.0;
    }
    return dense_row_impl<true, S, A>(o, z, y, mz, my, V, ws, rg);
}

}  // namespace rlpo::distill::detail
