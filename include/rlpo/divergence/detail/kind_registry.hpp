#pragma once
/// \file
/// The registry of the divergence kinds of the vocabulary pipeline (internal): one include
/// and one row of `RLPO_DIVERGENCE_KINDS` per kind. A new kind is its enumerator and names in
/// divergence/kinds.hpp, its `KindMath` specialisation in divergence/kinds/ (see
/// divergence/detail/kind_math.hpp) and its row here; the pipeline dispatches over the rows
/// (`dense_rows`, `dense_row_impl`).

#include <rlpo/divergence/kinds.hpp>
#include <rlpo/divergence/kinds/chi2.hpp>
#include <rlpo/divergence/kinds/forward_kl.hpp>
#include <rlpo/divergence/kinds/jsd.hpp>
#include <rlpo/divergence/kinds/reverse_kl.hpp>
#include <rlpo/divergence/kinds/skew_kl.hpp>
#include <rlpo/divergence/kinds/skew_reverse_kl.hpp>
#include <rlpo/divergence/kinds/tvd.hpp>

/// X(enumerator of `Divergence`) for every kind, in the enum's order.
#define RLPO_DIVERGENCE_KINDS(X) \
    X(ForwardKL)                 \
    X(ReverseKL)                 \
    X(JSD)                       \
    X(SkewKL)                    \
    X(SkewReverseKL)             \
    X(TVD)                       \
    X(ChiSquared)

namespace rlpo::distill::detail {

/// The kind whose `KindMath` computes `o.divergence` at o's β and α: JSD at β = 0 / 1 is
/// forward / reverse KL, skew KL at α = 0 is forward KL (m = q) and skew reverse KL at α = 0
/// reverse KL (m = p). The general kinds give the same values there, but their factors
/// (−(1−α) p/m, α q/m, …) overflow where the plain KLs' gradients are finite (a student far
/// below the teacher at small τ).
inline Divergence kind_to_run(const DistillOptions& o) {
    const Divergence d = o.divergence;
    if (d == Divergence::JSD && o.beta == 0.0) return Divergence::ForwardKL;
    if (d == Divergence::JSD && o.beta == 1.0) return Divergence::ReverseKL;
    if (d == Divergence::SkewKL && o.alpha == 0.0) return Divergence::ForwardKL;
    if (d == Divergence::SkewReverseKL && o.alpha == 0.0) return Divergence::ReverseKL;
    return d;
}

}  // namespace rlpo::distill::detail
