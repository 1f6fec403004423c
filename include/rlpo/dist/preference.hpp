#pragma once
/// \file
/// KTO on a sharded batch: the batch KL baseline z0 and the example count over all ranks.
/// Layout rule and error behaviour: dist/reductions.hpp (here each rank holds any subset of the
/// examples and of the KL completions; the loss is a sum over examples, so no order matters
/// beyond the rounding of the sums).

#include <rlpo/core/error.hpp>
#include <rlpo/dist/aggregation.hpp>
#include <rlpo/dist/reductions.hpp>
#include <rlpo/preference/kto.hpp>

#include <algorithm>
#include <vector>

namespace rlpo::dist {

/// KTO's z0 over all ranks: max(0, Σ_r Σ (π_KL − ref_KL) / Σ_r n_KL), TRL's gathered mean
/// (`calculate_KL`), as `KLBaseline::given(z0)` for `preference::kto_loss`. One sum of two
/// values. A rank may hold no KL completion (empty vectors); the whole batch needs at least
/// one. Bad input (rlpo::invalid_argument): vectors of different sizes or non-finite entries
/// (on the rank that holds them, before the reduction); no KL completion on any rank (every
/// rank throws).
template <class DP, class DR>
inline preference::KLBaseline kto_kl_baseline(const Eigen::MatrixBase<DP>& policy_kl_logps,
                                              const Eigen::MatrixBase<DR>& ref_kl_logps,
                                              const Reductions& red) {
    constexpr const char* fn = "dist::kto_kl_baseline";
    const std::vector<double> p =
        preference::detail::read_pairs(fn, "policy_kl_logps", policy_kl_logps, -1, "");
    const std::vector<double> r = preference::detail::read_pairs(
        fn, "ref_kl_logps", ref_kl_logps, static_cast<Index>(p.size()), "policy_kl_logps");
    double a[2] = {0.0, static_cast<double>(p.size())};
    for (std::size_t k = 0; k < p.size(); ++k) a[0] += p[k] - r[k];
    red.sum(a, 2);
    RLPO_CHECK(a[1] > 0, fn,
               "policy_kl_logps: no KL completion on any rank (the mean of none is undefined)");
    return preference::KLBaseline::given(std::max(a[0] / a[1], 0.0));
}

/// `preference::kto_loss` of the rank's examples in a sharded batch: z0 from `kl` (a given
/// value is used as it is; KL log-probs are the rank's share, reduced by `kto_kl_baseline`),
/// the mean over the global example count Σ_r (n_c + n_r) (unless `opts.num_examples` is set).
/// Returns the whole batch's value and metrics on every rank and the gradient of the rank's
/// examples (`[1, n_c + n_r]`, chosen first), equal to the same entries of one call on the
/// whole batch. `rewards/margins` is the difference of the global reward means (reported when
/// the batch has examples of both sides). A batch without examples gives value 0. Three sums
/// and a gather.
template <class D1, class D2, class D3, class D4>
Result<::rlpo::detail::scalar_t<D1>> kto_loss(const Eigen::MatrixBase<D1>& policy_chosen_logps,
                                              const Eigen::MatrixBase<D2>& policy_rejected_logps,
                                              const Eigen::MatrixBase<D3>& ref_chosen_logps,
                                              const Eigen::MatrixBase<D4>& ref_rejected_logps,
                                              const preference::KLBaseline& kl,
                                              const preference::KTOOptions& opts,
                                              const Reductions& red) {
    preference::KLBaseline z0 = kl;
    if (opts.loss == preference::KTOLoss::KTO && !kl.value && kl.policy_logps && kl.ref_logps)
        z0 = kto_kl_baseline(*kl.policy_logps, *kl.ref_logps, red);
    preference::KTOOptions o = opts;
    if (!o.num_examples) {
        const double n =
            red.sum(static_cast<double>(policy_chosen_logps.size() + policy_rejected_logps.size()));
        if (n > 0) o.num_examples = n;
    }
    auto res = preference::kto_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                    ref_rejected_logps, z0, o);
    Metrics local;  // every metric but the margin, which is recomputed from the global means
    for (const auto& e : res.metrics)
        if (e.first != "rewards/margins") {
            Metrics one;
            if (e.second.plain) one.set(e.first, 0.0);  // keeps the kind
            one.add(e.first, e.second.sum, e.second.count - (e.second.plain ? 1.0 : 0.0));
            local.merge(one.with_count_epsilon(e.second.count_epsilon));
        }
    res.metrics = std::move(local);
    reduce(res, red);
    if (res.metrics.contains("rewards/chosen") && res.metrics.contains("rewards/rejected"))
        res.metrics.set("rewards/margins",
                        res.metrics["rewards/chosen"] - res.metrics["rewards/rejected"]);
    return res;
}

}  // namespace rlpo::dist
