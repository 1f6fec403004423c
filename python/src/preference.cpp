// rlpo.preference: dpo_loss (TRL DPOTrainer loss types; gradient w.r.t. the policy's summed
// log-probs as a [2, B] array: row 0 chosen, row 1 rejected).
#include "common.hpp"

#include <rlpo/preference/dpo.hpp>

#include <pybind11/stl.h>

namespace rlpo_py {
namespace {

using namespace rlpo::preference;

/// A 1-D float array of any float dtype (lengths, pair weights: small, copied to double).
Eigen::VectorXd doubles(const char* fn, const char* name, const py::object& o) {
    std::vector<double> v;
    try {
        v = o.cast<std::vector<double>>();
    } catch (const py::cast_error&) {
        throw py::type_error(
            message(fn, name, "expected a 1-D sequence of numbers, given " + type_name(o)));
    }
    return Eigen::Map<const Eigen::VectorXd>(v.data(), static_cast<rlpo::Index>(v.size()));
}

py::tuple dpo_py(const py::object& pc, const py::object& pr, const py::object& rc,
                 const py::object& rr, const py::kwargs& kwargs) {
    constexpr const char* fn = "preference.dpo_loss";
    return dispatch(fn, "policy_chosen_logps", pc, [&](auto tag) {
        using S = decltype(tag);
        Kw kw(fn, kwargs);
        DPOOptions base;
        kw.choose("preset", base, {{"paper", DPOOptions{}}, {"trl", DPOOptions::trl()}});
        std::vector<std::string> types{"sigmoid"};
        std::vector<double> weights;
        py::object lt = kw.take("loss_type");
        if (lt && !lt.is_none()) {
            if (py::isinstance<py::str>(lt))
                types = {lt.cast<std::string>()};
            else
                types = lt.cast<std::vector<std::string>>();
        }
        kw.get("loss_weights", weights);
        DPOOptions o = make_dpo_options(types, weights, base);
        kw.get("beta", o.beta);
        kw.get("label_smoothing", o.label_smoothing);
        kw.get("sigmoid_label_smoothing", o.sigmoid_label_smoothing);
        kw.get("discopop_tau", o.discopop_tau);
        kw.get("bco_delta", o.bco_delta);
        std::string f;
        if (kw.get("f_divergence", f)) o.f_divergence = parse_f_divergence(f);
        kw.get("f_alpha", o.f_alpha);
        kw.get_opt("num_pairs", o.num_pairs);
        kw.get_opt("num_sft_tokens", o.num_sft_tokens);
        const char* of = "policy_chosen_logps";
        const rlpo::ConstMatMap<S> a = view<S>(fn, "policy_chosen_logps", pc, 1);
        const rlpo::ConstMatMap<S> b = view<S>(fn, "policy_rejected_logps", pr, 1, of);
        const rlpo::ConstMatMap<S> c = view<S>(fn, "ref_chosen_logps", rc, 1, of);
        const rlpo::ConstMatMap<S> d = view<S>(fn, "ref_rejected_logps", rr, 1, of);
        std::optional<CompletionLengths> lengths;
        py::object lc = kw.take("chosen_lengths"), lr = kw.take("rejected_lengths");
        const bool has_c = lc && !lc.is_none(), has_r = lr && !lr.is_none();
        if (has_c != has_r)
            throw py::value_error(std::string("rlpo.") + fn +
                                  ": lengths: pass both chosen_lengths= and rejected_lengths=");
        if (has_c)
            lengths = CompletionLengths{doubles(fn, "chosen_lengths", lc),
                                        doubles(fn, "rejected_lengths", lr)};
        std::optional<Eigen::VectorXd> pw;
        py::object w = kw.take("pair_weights");
        if (w && !w.is_none()) pw = doubles(fn, "pair_weights", w);
        const Out<S> out(kw, 2, a.rows());
        kw.finish();
        return call<S>(out, [&] { return dpo_loss(a, b, c, d, o, out.out, lengths, pw); });
    });
}

}  // namespace

void bind_preference(py::module_ m) {
    m.def("dpo_loss", &dpo_py, py::arg("policy_chosen_logps"), py::arg("policy_rejected_logps"),
          py::arg("ref_chosen_logps"), py::arg("ref_rejected_logps"));
    py::list names;
    const auto& table = detail::dpo_loss_table();
    for (std::size_t k = 0; k < table.size(); ++k) names.append(table[k].name);
    m.attr("DPO_LOSS_NAMES") = names;
}

}  // namespace rlpo_py
