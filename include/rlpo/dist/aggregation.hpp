#pragma once
/// \file
/// Data-parallel counterparts of the batch-level pieces of core/: the global `Normalizer` of a
/// sharded mini-batch, and the reduction of a rank's value and metrics to those of the whole
/// batch. Layout rule and error behaviour: dist/reductions.hpp.
///
/// A data-parallel loss step with any token-level objective reads:
///
///     const auto norm = rlpo::dist::global_normalizer(mask, Aggregation::TokenMean, red);
///     auto res = rlpo::policy::ppo_clip(logp, old_logp, adv, mask, {}, norm);  // this rank's rows
///     rlpo::dist::reduce(res, red);  // value and metrics of the whole batch, on every rank
///
/// `res.grad` is then the gradient of the whole-batch loss with respect to this rank's rows
/// (exactly what the same rows get in one call on the whole batch): the model's parameter
/// gradients are all-reduced (summed) by the trainer, as usual.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/dist/reductions.hpp>

#include <optional>
#include <string>
#include <vector>

namespace rlpo::dist {

/// The `Normalizer` of the whole mini-batch from this rank's `mask`: the token count Σ m and the
/// number of non-empty rows, summed over the ranks (one sum of two values). Equal to
/// `rlpo::global_normalizer(whole_mask, mode, norm_constant)`: a batch without tokens gives
/// counts of 1. Bad input: an invalid mask (negative or non-finite entries) →
/// rlpo::invalid_argument, on the rank that holds it, before the reduction.
template <class D>
inline Normalizer global_normalizer(const Eigen::MatrixBase<D>& mask, Aggregation mode,
                                    const Reductions& red,
                                    std::optional<double> norm_constant = {}) {
    const RowWeights w = row_weights("dist::global_normalizer", mask, Normalizer{mode});
    double counts[2] = {w.local_tokens, w.local_seqs};
    red.sum(counts, 2);
    Normalizer n;
    n.mode = mode;
    n.num_tokens = counts[0] > 0 ? counts[0] : 1.0;
    n.num_seqs = counts[1] > 0 ? counts[1] : 1.0;
    n.norm_constant = norm_constant;
    return n;
}

/// `base` (mode, C, ε's as they are) with the token and sequence counts of the whole
/// mini-batch from this rank's `mask` (as `global_normalizer`; one sum of two values): what a
/// `TrainingStep`'s `StepOptions::norm` or any objective's normalizer needs on a shard.
template <class D>
inline Normalizer with_global_counts(Normalizer base, const Eigen::MatrixBase<D>& mask,
                                     const Reductions& red) {
    const Normalizer g = global_normalizer(mask, base.mode, red, base.norm_constant);
    base.num_tokens = g.num_tokens;
    base.num_seqs = g.num_seqs;
    return base;
}

namespace detail {
/// A metric set as one vector: per entry the name's length and characters (one double each),
/// then sum, count, ε and the plain flag.
inline std::vector<double> encode(const Metrics& m) {
    std::vector<double> v;
    for (const auto& e : m) {
        v.push_back(static_cast<double>(e.first.size()));
        for (char c : e.first) v.push_back(static_cast<double>(static_cast<unsigned char>(c)));
        v.push_back(e.second.sum);
        v.push_back(e.second.count);
        v.push_back(e.second.count_epsilon);
        v.push_back(e.second.plain ? 1.0 : 0.0);
    }
    return v;
}
inline Metrics decode(const std::vector<double>& v) {
    Metrics out;
    std::size_t k = 0;
    while (k < v.size()) {
        const auto len = static_cast<std::size_t>(v[k++]);
        std::string name(len, ' ');
        for (std::size_t j = 0; j < len; ++j) name[j] = static_cast<char>(v[k++]);
        Metrics one;
        if (v[k + 3] > 0) {  // plain: keep the kind, the sum and the count (a merged one has > 1)
            one.set(name, 0.0);
            one.add(name, v[k], v[k + 1] - 1.0);
        } else {
            one.add(name, v[k], v[k + 1]);
            one.with_count_epsilon(v[k + 2]);
        }
        k += 4;
        out.merge(one);
    }
    return out;
}
}  // namespace detail

/// The metrics of the whole mini-batch from each rank's `metrics`: `Metrics::merge` of every
/// rank's set in rank order (sums and counts added; one gather of a short vector — the names
/// travel with the values, so ranks may report different sets, e.g. a rank without examples of
/// one side). The result is identical on every rank and equals the metrics of one call on the
/// whole batch for every mean metric (value = Σ sum / Σ count). A plain metric (set as a value,
/// count 1) becomes the mean over the ranks that report it, again a plain value (count 1) —
/// right for values every rank shares (a coefficient, a baseline given to all), documented per
/// function where it is not.
inline Metrics reduce_metrics(const Metrics& metrics, const Reductions& red) {
    if (red.local()) return metrics;
    const auto parts = red.gather(detail::encode(metrics));
    Metrics merged;
    for (const auto& p : parts) merged.merge(detail::decode(p));
    Metrics out;  // a plain metric stays plain: the mean of its parts, count 1
    for (const auto& e : merged) {
        Metrics one;
        if (e.second.plain)
            one.set(e.first, e.second.sum / e.second.count);
        else
            one.add(e.first, e.second.sum, e.second.count);
        out.merge(one.with_count_epsilon(e.second.count_epsilon));
    }
    return out;
}

/// A rank's `Result` (computed with the global normaliser, dist::global_normalizer) → the
/// whole batch's value (Σ over ranks, in rank order) and metrics (`reduce_metrics`), on every
/// rank; the gradient is left as it is (this rank's rows). One sum and one gather.
template <class S>
inline Result<S>& reduce(Result<S>& res, const Reductions& red) {
    if (red.local()) return res;
    res.value = red.sum(res.value);
    res.metrics = reduce_metrics(res.metrics, red);
    return res;
}

}  // namespace rlpo::dist
