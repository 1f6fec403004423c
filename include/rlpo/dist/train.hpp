#pragma once
/// \file
/// `TrainingStep` on a sharded mini-batch. Each rank builds its step with the global counts
/// (`dist::with_global_counts(opts.norm, mask, red)`), runs it on its rows, and reduces the
/// result: the loss parts are summed over the ranks and the metrics merged, so every rank holds
/// the whole batch's `StepResult` values and metrics, and its own rows' gradients — what one
/// step on the whole batch gives those rows. Layout rule and error behaviour:
/// dist/reductions.hpp.
///
///     StepOptions o = …;
///     o.norm = rlpo::dist::with_global_counts(o.norm, mask, red);
///     auto res = rlpo::train::TrainingStep<float>(o)(inputs);
///     rlpo::dist::reduce(res, red);
///
/// The advantages come from the dist:: estimators before the step. A surrogate whose token
/// selection is batch-level (KL-Cov, Clip-Cov) selects over all ranks' rows when the step is
/// given the reductions (`StepOptions::reductions = &red`), over the rank's rows otherwise.

#include <rlpo/dist/aggregation.hpp>
#include <rlpo/dist/reductions.hpp>
#include <rlpo/train/step.hpp>

namespace rlpo::dist {

/// A rank's `StepResult` → the whole batch's loss parts (each a sum over the ranks, in rank
/// order) and metrics (`reduce_metrics`), on every rank; gradients untouched. One sum of six
/// values and one gather.
template <class S>
inline train::StepResult<S>& reduce(train::StepResult<S>& res, const Reductions& red) {
    if (red.local()) return res;
    double v[6] = {res.loss,         res.pg_loss, res.kl_loss,
                   res.entropy_loss, res.vf_loss, res.distill_loss};
    red.sum(v, 6);
    res.loss = v[0], res.pg_loss = v[1], res.kl_loss = v[2], res.entropy_loss = v[3];
    res.vf_loss = v[4], res.distill_loss = v[5];
    res.metrics = reduce_metrics(res.metrics, red);
    return res;
}

}  // namespace rlpo::dist
