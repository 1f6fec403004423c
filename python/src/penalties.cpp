// rlpo.penalties: kl_penalty (token estimators by their verl / TRL names; gradient w.r.t.
// logp).
#include "common.hpp"

#include <rlpo/penalties/kl_estimators.hpp>

namespace rlpo_py {
namespace {

using namespace rlpo::penalties;

py::tuple kl_penalty_py(const py::object& logp, const py::object& ref_logp, const py::object& mask,
                        const py::kwargs& kwargs) {
    constexpr const char* fn = "penalties.kl_penalty";
    return dispatch(fn, "logp", logp, [&](auto tag) {
        using S = decltype(tag);
        Kw kw(fn, kwargs);
        KLOptions opts;
        kw.choose("preset", opts,
                  {{"paper", KLOptions{}}, {"verl", KLOptions::verl()}, {"trl", KLOptions::trl()}});
        std::string est;
        if (kw.get("estimator", est)) opts.estimator = parse_kl_estimator(est);
        kw.get("log_ratio_clamp", opts.log_ratio_clamp);
        kw.get("value_clamp", opts.value_clamp);
        const rlpo::ConstMatMap<S> lp = view<S>(fn, "logp", logp);
        const rlpo::ConstMatMap<S> ref = view<S>(fn, "ref_logp", ref_logp, 2, "logp");
        const rlpo::ConstMatMap<S> m = view<S>(fn, "mask", mask, 2, "logp");
        std::optional<rlpo::ConstMatMap<S>> old;
        py::object o = kw.take("old_logp");
        if (o && !o.is_none()) old.emplace(view<S>(fn, "old_logp", o, 2, "logp"));
        const rlpo::Normalizer norm = normalizer(kw);
        const Out<S> out(kw, lp.rows(), lp.cols());
        kw.finish();
        return call<S>(out, [&] {
            return old ? kl_penalty_corrected(lp, *old, ref, m, opts, norm, out.out)
                       : kl_penalty(lp, ref, m, opts, norm, out.out);
        });
    });
}

}  // namespace

void bind_penalties(py::module_ m) {
    m.def("kl_penalty", &kl_penalty_py, py::arg("logp"), py::arg("ref_logp"), py::arg("mask"));
    py::list names;
    for (std::size_t k = 0; k < detail::kl_estimator_table.size(); ++k)
        names.append(detail::kl_estimator_table[k].name);
    m.attr("KL_ESTIMATOR_NAMES") = names;
}

}  // namespace rlpo_py
