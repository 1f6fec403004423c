#pragma once
/// \file
/// The shared driver of the unpaired preference losses (internal): KTO and BCO read a desirable
/// (chosen) and an undesirable (rejected) set of examples of independent sizes n_c, n_r, give
/// each example a loss of its own log-ratio u = π − ref, and average the concatenated
/// `[chosen; rejected]` losses (TRL's `torch.cat((chosen_losses, rejected_losses)).nanmean()`).
///
/// The driver owns the input checks (shape, size and non-finite checks, through `read_pairs`),
/// the optional per-example weights, the mean over N = n_c + n_r examples (or a global example
/// count), the gradient sink (one `[1, n_c + n_r]` gradient: the n_c chosen entries first, then
/// the n_r rejected ones, the order of TRL's concatenation) and the metrics both trainers log.
/// A loss supplies two per-example functions u ↦ (ℓ, dℓ/du), one per side.

#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>

#include <optional>
#include <utility>
#include <vector>

namespace rlpo::preference::detail {

/// One call's examples, in double: policy and reference log-probs of each side.
struct UnpairedData {
    std::vector<double> pc, rc, pr, rr;
};

/// Reads the four vectors: each reference must match its own side's policy vector.
template <class D1, class D2, class D3, class D4>
UnpairedData read_unpaired(const char* fn, const Eigen::MatrixBase<D1>& policy_chosen,
                           const Eigen::MatrixBase<D2>& policy_rejected,
                           const Eigen::MatrixBase<D3>& ref_chosen,
                           const Eigen::MatrixBase<D4>& ref_rejected) {
    UnpairedData d;
    d.pc = read_pairs(fn, "policy_chosen_logps", policy_chosen, -1, "");
    d.pr = read_pairs(fn, "policy_rejected_logps", policy_rejected, -1, "");
    d.rc = read_pairs(fn, "ref_chosen_logps", ref_chosen, static_cast<Index>(d.pc.size()),
                      "policy_chosen_logps");
    d.rr = read_pairs(fn, "ref_rejected_logps", ref_rejected, static_cast<Index>(d.pr.size()),
                      "policy_rejected_logps");
    return d;
}

/// Optional constant per-example weights of one side (unset: all 1); finite and ≥ 0.
inline std::vector<double> read_example_weights(const char* fn, const char* name,
                                                const std::optional<Eigen::VectorXd>& w,
                                                std::size_t n, const char* like) {
    if (!w) return std::vector<double>(n, 1.0);
    std::vector<double> out = read_pairs(fn, name, *w, static_cast<Index>(n), like);
    for (std::size_t k = 0; k < out.size(); ++k)
        RLPO_CHECK(out[k] >= 0, fn, name, ": must be >= 0, given ", out[k], " at pair ", k);
    return out;
}

/// Σ over both sides of w·ℓ(u) / N and its gradient into the sink; `loss_c`, `loss_r` map u to
/// (ℓ, dℓ/du); `wc`, `wr` the per-example weights (side weight × example weight).
template <class S, class FC, class FR>
Result<S> run_unpaired(const char* fn, const UnpairedData& d, const std::vector<double>& wc,
                       const std::vector<double>& wr, const std::optional<double>& num_examples,
                       const GradientOut<S>& out, FC&& loss_c, FR&& loss_r) {
    Result<S> res;
    const Index nc = static_cast<Index>(d.pc.size()), nr = static_cast<Index>(d.pr.size());
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, 1, nc + nr);
    const double n = num_examples ? *num_examples : static_cast<double>(nc + nr);
    double sum = 0.0;
    for (Index i = 0; i < nc; ++i) {
        const std::size_t k = static_cast<std::size_t>(i);
        const std::pair<double, double> l = loss_c(d.pc[k] - d.rc[k]);
        sum += wc[k] * l.first;
        put_finite(fn, g, 0, i, wc[k] * l.second / n);
    }
    for (Index i = 0; i < nr; ++i) {
        const std::size_t k = static_cast<std::size_t>(i);
        const std::pair<double, double> l = loss_r(d.pr[k] - d.rr[k]);
        sum += wr[k] * l.first;
        put_finite(fn, g, 0, nc + i, wr[k] * l.second / n);
    }
    res.value = nc + nr > 0 ? g.coef() * sum / n : 0.0;
    return res;
}

/// TRL's per-side metrics (rewards r = β·u): `rewards/chosen`, `logps/chosen` over the n_c
/// chosen examples and `rewards/rejected`, `logps/rejected` over the n_r rejected ones, each
/// kept as (sum, count) so micro-batches merge to the batch mean; a side with no examples
/// reports none (TRL logs them only when the gathered count is > 0). `rewards/margins` (the
/// difference of the two reward means of this call) only when both sides have examples.
inline void unpaired_metrics(Metrics& m, const UnpairedData& d, double beta) {
    double rc = 0, lc = 0, rr = 0, lr = 0;
    for (std::size_t k = 0; k < d.pc.size(); ++k) {
        rc += beta * (d.pc[k] - d.rc[k]);
        lc += d.pc[k];
    }
    for (std::size_t k = 0; k < d.pr.size(); ++k) {
        rr += beta * (d.pr[k] - d.rr[k]);
        lr += d.pr[k];
    }
    const double nc = static_cast<double>(d.pc.size()), nr = static_cast<double>(d.pr.size());
    if (nc > 0) {
        m.add("rewards/chosen", rc, nc);
        m.add("logps/chosen", lc, nc);
    }
    if (nr > 0) {
        m.add("rewards/rejected", rr, nr);
        m.add("logps/rejected", lr, nr);
    }
    if (nc > 0 && nr > 0) m.set("rewards/margins", rc / nc - rr / nr);
}

}  // namespace rlpo::preference::detail
