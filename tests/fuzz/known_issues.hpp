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

/// HOLE v0-logits: V = 0 logit rows (an empty vocabulary) reach Eigen's maxCoeff on an empty
/// row (assertion / undefined behaviour) instead of rlpo::invalid_argument.
inline const char* v0_logits(rlpo::Index V) {
    return V == 0 ? skip("v0-logits: V = 0 logits crash in the row check") : nullptr;
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
const char* entropy(const rlpo::Mat<S>&, const rlpo::Mat<S>& m, const rlpo::Normalizer& norm) {
    return row_factor_overflow<S>(norm, &m);
}
template <class O, class S>
const char* divergence(const O&, const rlpo::Mat<S>& z, const rlpo::Mat<S>&, const rlpo::Mat<S>& m,
                       const rlpo::Normalizer& norm) {
    if (const char* h = v0_logits(z.cols())) return h;
    return row_factor_overflow<S>(norm, &m);
}
template <class O, class S, class... A>
const char* topk(const O&, const rlpo::Mat<S>& z, const A&...) {
    return v0_logits(z.cols());
}
template <class O, class S, class... A>
const char* dac_kl(const O&, const rlpo::Mat<S>& z, const A&...) {
    return v0_logits(z.cols());
}
template <class O, class S, class... A>
const char* taid(const O&, const rlpo::Mat<S>& z, const A&...) {
    return v0_logits(z.cols());
}
template <class O, class S, class... A>
const char* nkd(const O&, const rlpo::Mat<S>& z, const A&...) {
    return v0_logits(z.cols());
}
/// HOLE sinkhorn-underflow: distill::sinkhorn with a small ε (valid: > 0): K⁰ = exp(−W/ε)
/// underflows to 0 for a whole row, and the row normalisation divides 0 by 0: NaN value and
/// gradient (e.g. τ 100, ε 1e-8, one row, W = 6e-4).
template <class O, class S, class... A>
const char* sinkhorn(const O& o, const rlpo::Mat<S>& z, const A&...) {
    if (const char* h = v0_logits(z.cols())) return h;
    if (o.epsilon < 0.02) return skip("sinkhorn-underflow: exp(-W/eps) underflows, 0/0 = NaN");
    return nullptr;
}
template <class... A>
const char* rollout(const A&...) {
    return nullptr;
}
template <class O, class S>
const char* train_step(const O& o, bool from_logits, rlpo::Index V, const rlpo::Mat<S>& m) {
    if (from_logits || o.entropy_coef != 0)
        if (const char* h = v0_logits(V)) return h;
    return row_factor_overflow<S>(o.norm, &m);
}
/// HOLE orpo-tiny-log-odds: preference::orpo_loss with a length-averaged log-prob just below 0
/// (e.g. −4.9e-324, or −3.4 over a length of 1e300: finite, < 0, inside the documented range):
/// the odds derivative −1/expm1(ā) overflows to inf and meets a 0 sigmoid factor: NaN gradient
/// (or inf). Checked again with the lengths (`orpo_lengths`).
template <class S>
const char* preference(int entry, const rlpo::Mat<S>& pc, const rlpo::Mat<S>& pr) {
    if (entry != 4) return nullptr;
    for (const auto* x : {&pc, &pr})
        for (rlpo::Index i = 0; i < x->size(); ++i) {
            const double v = static_cast<double>(x->data()[i]);
            if (v < 0 && v > -1e-290)
                return skip("orpo-tiny-log-odds: log-prob just below 0 gives a NaN / inf gradient");
        }
    return nullptr;
}

template <class L>
const char* orpo_lengths(const std::optional<L>& len) {
    if (!len) return nullptr;
    if (len->chosen.maxCoeff() > 1e250 || len->rejected.maxCoeff() > 1e250)
        return skip("orpo-tiny-log-odds: log-prob just below 0 gives a NaN / inf gradient");
    // HOLE orpo-zero-length: a completion length 0 (documented: clamped to >= 1) gives an
    // infinite gradient (β 1e8, lengths 0 / 1, ordinary log-probs).
    if (len->chosen.size() > 0 && (len->chosen.minCoeff() < 1 || len->rejected.minCoeff() < 1))
        return skip("orpo-zero-length: a length below 1 gives an infinite gradient");
    return nullptr;
}

/// HOLE alphapo-float-grad: preference::cpo_loss (AlphaPO, α = 1e3) in float: the reward
/// e^{−α·x/|y|} is computed in double and stays below the documented 709 limit, but the
/// gradient written to a float buffer overflows to −inf (B 1, x = −0.87 / −0.72, lengths 7 /
/// 100).
template <class S>
const char* alphapo(double alpha) {
    if (std::is_same<S, float>::value && std::fabs(alpha) >= 100)
        return skip("alphapo-float-grad: AlphaPO gradient overflows the float buffer");
    return nullptr;
}

/// HOLE combine-overflow: rollout::combine_rewards with finite weights and rewards whose
/// products overflow (w = 1e300, r = ±1e30) sums −inf + inf: NaN, not numerical_error.
template <class S>
const char* combine_rewards(const rlpo::Mat<S>& R, const std::vector<double>& w) {
    double big = 0;
    for (double x : w) big = std::max(big, std::fabs(x));
    if (w.empty()) big = 1;
    for (rlpo::Index i = 0; i < R.size(); ++i)
        if (big * std::fabs(static_cast<double>(R.data()[i])) > 1e300)
            return skip("combine-overflow: weighted rewards overflow to inf − inf = NaN");
    return nullptr;
}

}  // namespace fz::known
