#pragma once
// Known holes of the library that the fuzz targets step around, so that fuzzing can go on
// past them. TEMPORARY: each entry names the hole and is a predicate on the decoded input
// (returning the hole's name, or null); remove an entry when its fix merges, and the target
// checks those cases again. An entry point without a hole takes every input.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/types.hpp>

#include "fuzz_common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace fz::known {

/// Report a skipped case once per hole (to stderr), so a run shows which holes it stepped over.
inline const char* skip(const char* hole) {
    if (!skips_enabled()) return nullptr;
    static std::vector<const char*> seen;
    for (const char* s : seen)
        if (s == hole) return hole;
    seen.push_back(hole);
    std::fprintf(stderr, "fuzz: skipping known issue: %s\n", hole);
    return hole;
}

/// HOLE row-factor-overflow: a row factor c·m beyond the type's range — from a Normalizer
/// count near 0 (num_tokens = 1e-300: valid, > 0 and finite), tiny mask weights (a denormal
/// weight alone in its row) or huge ones — overflows the gradient: inf, or inf·0 = NaN where
/// the per-token derivative is 0, is returned instead of a finite gradient or
/// rlpo::numerical_error. Keyed on the magnitudes of the counts and mask weights: any outside
/// [1e-(M−10), 1e(M−10)] or spanning more than 1e(M−10), M = log10 of the type's max (38, 308).
template <class S>
const char* row_factor_overflow(const rlpo::Normalizer& n, const rlpo::Mat<S>* mask = nullptr) {
    const double M = std::log10(static_cast<double>(std::numeric_limits<S>::max())) - 10;
    double lo = 0, hi = 0;  // log10 range of the weights (1 is always in it)
    const auto see = [&](double v) {
        if (!(v > 0) || !std::isfinite(v)) return;
        lo = std::min(lo, std::log10(v));
        hi = std::max(hi, std::log10(v));
    };
    for (const auto& c : {n.num_tokens, n.num_seqs, n.norm_constant})
        if (c) see(*c);
    if (mask)
        for (rlpo::Index i = 0; i < mask->size(); ++i) see(static_cast<double>(mask->data()[i]));
    if (lo < -M || hi > M || hi - lo > M)
        return skip(
            "row-factor-overflow: a row factor beyond the type's range gives an inf / "
            "NaN gradient");
    return nullptr;
}

template <class O, class S, class W>
const char* policy_loss(const O&, const rlpo::Mat<S>&, const rlpo::Mat<S>&, const rlpo::Mat<S>&,
                        const rlpo::Mat<S>& m, const rlpo::Normalizer& norm, const W&) {
    return row_factor_overflow<S>(norm, &m);
}
template <class O, class S>
const char* kl(int, const O&, const rlpo::Mat<S>&, const rlpo::Mat<S>&, const rlpo::Mat<S>&,
               const rlpo::Mat<S>& m, const rlpo::Normalizer& norm) {
    return row_factor_overflow<S>(norm, &m);
}
template <class S>
const char* entropy(const rlpo::Mat<S>&, const rlpo::Mat<S>&, const rlpo::Normalizer&) {
    return nullptr;
}
template <class O, class S>
const char* divergence(const O&, const rlpo::Mat<S>&, const rlpo::Mat<S>&, const rlpo::Mat<S>&,
                       const rlpo::Normalizer&) {
    return nullptr;
}
template <class O, class... A>
const char* topk(const O&, const A&...) {
    return nullptr;
}
template <class O, class... A>
const char* dac_kl(const O&, const A&...) {
    return nullptr;
}
template <class O, class... A>
const char* taid(const O&, const A&...) {
    return nullptr;
}
template <class O, class... A>
const char* nkd(const O&, const A&...) {
    return nullptr;
}
template <class O, class... A>
const char* sinkhorn(const O&, const A&...) {
    return nullptr;
}
template <class... A>
const char* rollout(const A&...) {
    return nullptr;
}
template <class O, class S>
const char* train_step(const O& o, bool from_logits, rlpo::Index V, const rlpo::Mat<S>& m) {
    (void)from_logits;
    (void)V;
    return row_factor_overflow<S>(o.norm, &m);
}
template <class S>
const char* preference(int, const rlpo::Mat<S>&, const rlpo::Mat<S>&) {
    return nullptr;
}

template <class L>
const char* orpo_lengths(const std::optional<L>&) {
    return nullptr;
}

template <class S>
const char* alphapo(double) {
    return nullptr;
}

template <class S>
const char* combine_rewards(const rlpo::Mat<S>&, const std::vector<double>&) {
    return nullptr;
}

}  // namespace fz::known
