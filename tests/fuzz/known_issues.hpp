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

template <class O, class S, class W>
const char* policy_loss(const O&, const rlpo::Mat<S>&, const rlpo::Mat<S>&, const rlpo::Mat<S>&,
                        const rlpo::Mat<S>&, const rlpo::Normalizer&, const W&) {
    return nullptr;
}
template <class O, class S>
const char* kl(int, const O&, const rlpo::Mat<S>&, const rlpo::Mat<S>&, const rlpo::Mat<S>&,
               const rlpo::Mat<S>&, const rlpo::Normalizer&) {
    return nullptr;
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
const char* train_step(const O&, bool, rlpo::Index, const rlpo::Mat<S>&) {
    return nullptr;
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
