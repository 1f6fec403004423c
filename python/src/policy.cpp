// rlpo.policy: policy_loss (every surrogate of the registry, by its verl / TRL name) and
// ppo_clip. Gradient w.r.t. logp.
#include "common.hpp"

#include <rlpo/policy/policy_loss.hpp>

namespace rlpo_py {
namespace {

using namespace rlpo::policy;

/// `forced_aggregation`: the mode a surrogate forces (None: the Normalizer's).
void forced(Kw& kw, std::optional<rlpo::Aggregation>& a) {
    py::object o = kw.take("forced_aggregation");
    if (!o) return;
    if (o.is_none())
        a.reset();
    else
        a = rlpo::parse_aggregation(o.cast<std::string>());
}

void apply(Kw& kw, PPOClipOptions& o) {
    kw.get("clip_low", o.clip_low);
    kw.get("clip_high", o.clip_high);
    kw.get_opt("dual_clip", o.dual_clip);
    kw.get("log_ratio_clamp", o.log_ratio_clamp);
    kw.get_opt("two_sided_delta", o.two_sided_delta);
}
void apply(Kw&, ReinforceOptions&) {}
void apply(Kw& kw, GSPOOptions& o) {
    kw.get("clip_low", o.clip_low);
    kw.get("clip_high", o.clip_high);
    kw.choose("level", o.level, {{"token", GSPOLevel::Token}, {"sequence", GSPOLevel::Sequence}});
    kw.get("log_ratio_cap", o.log_ratio_cap);
    forced(kw, o.aggregation);
}
void apply(Kw& kw, CISPOOptions& o) {
    kw.choose("bound", o.bound, {{"clip", CISPOBound::Clip}, {"cap", CISPOBound::Cap}});
    kw.get("clip_low", o.clip_low);
    kw.get("clip_high", o.clip_high);
    kw.get("cap", o.cap);
    kw.get("log_ratio_clamp", o.log_ratio_clamp);
}
void apply(Kw& kw, SAPOOptions& o) {
    kw.get("tau_pos", o.tau_pos);
    kw.get("tau_neg", o.tau_neg);
    kw.get("log_ratio_clamp", o.log_ratio_clamp);
    forced(kw, o.aggregation);
}
void apply(Kw& kw, GMPOOptions& o) {
    kw.get("clip_low", o.clip_low);
    kw.get("clip_high", o.clip_high);
    forced(kw, o.aggregation);
}
void apply(Kw& kw, ClipCovOptions& o) {
    kw.get("clip_low", o.clip_low);
    kw.get("clip_high", o.clip_high);
    kw.get("ratio", o.ratio);
    kw.get("cov_lb", o.cov_lb);
    kw.get("cov_ub", o.cov_ub);
    kw.get("seed", o.seed);
}
void apply(Kw& kw, KLCovOptions& o) {
    kw.get("ratio", o.ratio);
    kw.get("kl_coef", o.kl_coef);
}
void apply(Kw& kw, DPPOOptions& o) {
    kw.choose("divergence", o.divergence,
              {{"binary_tv", DPPODivergence::BinaryTV}, {"binary_kl", DPPODivergence::BinaryKL}});
    kw.get("delta_low", o.delta_low);
    kw.get("delta_high", o.delta_high);
    kw.get("ratio_cap", o.ratio_cap);
    kw.get("log_ratio_clamp", o.log_ratio_clamp);
}
void apply(Kw& kw, DROOptions& o) { kw.get("beta", o.beta); }
void apply(Kw& kw, LUSPOOptions& o) {
    kw.get("clip_low", o.clip_low);
    kw.get("clip_high", o.clip_high);
    forced(kw, o.aggregation);
}
void apply(Kw& kw, VESPOOptions& o) {
    kw.get("k_pos", o.k_pos);
    kw.get("lambda_pos", o.lambda_pos);
    kw.get("k_neg", o.k_neg);
    kw.get("lambda_neg", o.lambda_neg);
}

/// The chosen variant's options from the keywords.
void apply(Kw& kw, PolicyLossOptions& o) {
    switch (o.loss) {
#define RLPO_PY_APPLY(E, member, O, paper, verl, trl, run, ...) \
    case PolicyLoss::E: apply(kw, o.member); break;
        RLPO_POLICY_LOSSES(RLPO_PY_APPLY)
#undef RLPO_PY_APPLY
    }
}

/// The four `[B, T]` token inputs of a surrogate, read in place.
template <class S>
struct TokenInputs {
    rlpo::ConstMatMap<S> logp, old_logp, adv, mask;
    TokenInputs(const char* fn, const py::handle& l, const py::handle& o, const py::handle& a,
                const py::handle& m)
        : logp(view<S>(fn, "logp", l)),
          old_logp(view<S>(fn, "old_logp", o, 2, "logp")),
          adv(view<S>(fn, "advantages", a, 2, "logp")),
          mask(view<S>(fn, "mask", m, 2, "logp")) {}
};

py::tuple policy_loss_py(const std::string& name, const py::object& logp,
                         const py::object& old_logp, const py::object& advantages,
                         const py::object& mask, const py::kwargs& kwargs) {
    constexpr const char* fn = "policy.policy_loss";
    return dispatch(fn, "logp", logp, [&](auto tag) {
        using S = decltype(tag);
        Kw kw(fn, kwargs);
        Anchor anchor = Anchor::Verl;
        kw.choose("preset", anchor,
                  {{"verl", Anchor::Verl}, {"trl", Anchor::TRL}, {"paper", Anchor::Paper}});
        ImportanceSampling level = ImportanceSampling::Token;
        kw.choose(
            "importance_sampling", level,
            {{"token", ImportanceSampling::Token}, {"sequence", ImportanceSampling::Sequence}});
        PolicyLossOptions opts = make_policy_loss(name, anchor, level);
        apply(kw, opts);
        const TokenInputs<S> in(fn, logp, old_logp, advantages, mask);
        TokenWeights<S> is_weights;
        py::object w = kw.take("is_weights");
        if (w && !w.is_none()) is_weights.emplace(view<S>(fn, "is_weights", w, 2, "logp"));
        const rlpo::Normalizer norm = normalizer(kw);
        const Out<S> out(kw, in.logp.rows(), in.logp.cols());
        kw.finish();
        return call<S>(out, [&] {
            return policy_loss(opts, in.logp, in.old_logp, in.adv, in.mask, norm, out.out,
                               is_weights);
        });
    });
}

py::tuple ppo_clip_py(const py::object& logp, const py::object& old_logp,
                      const py::object& advantages, const py::object& mask,
                      const py::kwargs& kwargs) {
    constexpr const char* fn = "policy.ppo_clip";
    return dispatch(fn, "logp", logp, [&](auto tag) {
        using S = decltype(tag);
        Kw kw(fn, kwargs);
        PPOClipOptions opts;
        kw.choose("preset", opts,
                  {{"paper", PPOClipOptions{}},
                   {"verl", PPOClipOptions::verl()},
                   {"trl", PPOClipOptions::trl()},
                   {"openrlhf", PPOClipOptions::openrlhf()},
                   {"dapo", PPOClipOptions::dapo()},
                   {"intellect2", PPOClipOptions::intellect2()}});
        apply(kw, opts);
        const TokenInputs<S> in(fn, logp, old_logp, advantages, mask);
        const rlpo::Normalizer norm = normalizer(kw);
        const Out<S> out(kw, in.logp.rows(), in.logp.cols());
        kw.finish();
        return call<S>(out, [&] {
            return ppo_clip(in.logp, in.old_logp, in.adv, in.mask, opts, norm, out.out);
        });
    });
}

}  // namespace

void bind_policy(py::module_ m) {
    m.def("policy_loss", &policy_loss_py, py::arg("name"), py::arg("logp"), py::arg("old_logp"),
          py::arg("advantages"), py::arg("mask"));
    m.def("ppo_clip", &ppo_clip_py, py::arg("logp"), py::arg("old_logp"), py::arg("advantages"),
          py::arg("mask"));
    py::list names;
    const auto& table = rlpo::policy::detail::policy_loss_table();
    for (std::size_t k = 0; k < table.size(); ++k) names.append(table[k].name);
    m.attr("POLICY_LOSS_NAMES") = names;
}

}  // namespace rlpo_py
