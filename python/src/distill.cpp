// rlpo.distill: divergence (forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, tvd, chi2 by
// name; gradient w.r.t. the student logits).
#include "common.hpp"

#include <rlpo/distill/divergences.hpp>

namespace rlpo_py {
namespace {

using namespace rlpo::distill;

py::tuple divergence_py(const py::object& student_logits, const py::object& teacher_logits,
                        const py::object& mask, const py::kwargs& kwargs) {
    constexpr const char* fn = "distill.divergence";
    return dispatch(fn, "student_logits", student_logits, [&](auto tag) {
        using S = decltype(tag);
        Kw kw(fn, kwargs);
        DistillOptions opts;
        kw.choose("preset", opts,
                  {{"paper", DistillOptions{}},
                   {"hinton", DistillOptions::hinton(1.0)},
                   {"trl", DistillOptions::trl_gkd()},
                   {"liger", DistillOptions::liger_jsd()},
                   {"distillm", DistillOptions::distillm()}});
        std::string name;
        if (kw.get("divergence", name)) opts.divergence = parse_divergence(name);
        kw.get("temperature", opts.temperature);
        kw.get("temperature_squared", opts.temperature_squared);
        kw.get("beta", opts.beta);
        kw.get("alpha", opts.alpha);
        const rlpo::ConstMatMap<S> z = view<S>(fn, "student_logits", student_logits);
        const rlpo::ConstMatMap<S> y =
            view<S>(fn, "teacher_logits", teacher_logits, 2, "student_logits");
        // No mask: every row its own sequence, all kept (the C++ overload without a mask).
        rlpo::Mat<S> ones;
        std::optional<rlpo::ConstMatMap<S>> m;
        if (mask.is_none()) {
            ones = rlpo::Mat<S>::Ones(z.rows(), 1);
            m.emplace(ones.data(), z.rows(), 1);
        } else {
            m.emplace(view<S>(fn, "mask", mask, 2, "student_logits"));
        }
        const rlpo::Normalizer norm = normalizer(kw);
        const Out<S> out(kw, z.rows(), z.cols());
        kw.finish();
        return call<S>(out, [&] { return divergence(z, y, *m, opts, norm, out.out); });
    });
}

}  // namespace

void bind_distill(py::module_ m) {
    m.def("divergence", &divergence_py, py::arg("student_logits"), py::arg("teacher_logits"),
          py::arg("mask") = py::none());
    py::list names;
    for (std::size_t k = 0; k < detail::divergence_table.size(); ++k)
        names.append(detail::divergence_table[k].name);
    m.attr("DIVERGENCE_NAMES") = names;
}

}  // namespace rlpo_py
