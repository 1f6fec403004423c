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
