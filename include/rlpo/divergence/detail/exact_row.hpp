#pragma once
/// \file
/// The exact row path of the dense divergences (internal): one row at a time with Eigen
/// array expressions, zero probabilities (−inf logits) handled exactly. The pipelined fast
/// path (divergence/detail/driver.hpp) sends here the rows it cannot take (non-finite logits, sums or
/// values), and its errors (NaN, +inf, all −inf) are found here. Each kind's row is its
/// `KindMath::exact` (divergence/kinds/).

#include <rlpo/core/result.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/kind_math.hpp>
#include <rlpo/divergence/detail/kind_registry.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <cmath>
#include <type_traits>

namespace rlpo::distill::detail {

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
    const Divergence d = kind_to_run(o);
    // the kind's exact row (`KindMath::exact`)
    const ExactRow<Safe, S, A, std::decay_t<decltype(zs)>, std::decay_t<decltype(ys)>> x{
        o, invT, eq, ep, zs, ys, cq, cp, iq, ip, ws, V, rg};
    switch (d) {
#define RLPO_DIVERGENCE_EXACT(K) \
    case Divergence::K: return KindMath<Divergence::K>::exact(x);
        RLPO_DIVERGENCE_KINDS(RLPO_DIVERGENCE_EXACT)
#undef RLPO_DIVERGENCE_EXACT
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
