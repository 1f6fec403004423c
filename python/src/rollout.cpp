// rlpo.rollout: group-relative advantages (GRPO, RLOO) and broadcast_to_tokens. Values only.
#include "common.hpp"

#include <rlpo/rollout/advantages.hpp>

#include <pybind11/stl.h>

namespace rlpo_py {
namespace {

using namespace rlpo::rollout;

/// `group_size=` (equal groups) or `group_ids=` (contiguous ids), exactly one of them.
Groups groups_of(Kw& kw, rlpo::Index n) {
    const char* fn = kw.fn();
    py::object size = kw.take("group_size"), ids = kw.take("group_ids");
    const bool has_size = size && !size.is_none(), has_ids = ids && !ids.is_none();
    if (has_size == has_ids)
        throw py::value_error(std::string("rlpo.") + fn +
                              ": groups: pass exactly one of group_size= or group_ids=");
    if (has_size) {
        if (!py::isinstance<py::int_>(size))
            throw py::type_error(
                message(fn, "group_size", "expected an int, given " + type_name(size)));
        return Groups::equal(n, size.cast<rlpo::Index>());
    }
    std::vector<std::int64_t> v;
    try {
        v = ids.cast<std::vector<std::int64_t>>();
    } catch (const py::cast_error&) {
        throw py::type_error(
            message(fn, "group_ids", "expected a sequence of ints, given " + type_name(ids)));
    }
    return Groups::from_ids(v);
}

void nan_scores(Kw& kw, NanScores& x) {
    kw.choose("nan_scores", x, {{"throw", NanScores::Throw}, {"as_zero", NanScores::AsZero}});
}
void singleton(Kw& kw, SingletonGroups& x) {
    kw.choose("singleton", x,
              {{"zero", SingletonGroups::Zero}, {"raw_score", SingletonGroups::RawScore}});
}

template <class S, class F>
py::array values(F&& f) {
    rlpo::Vec<S> v;
    {
        py::gil_scoped_release nogil;
        v = f();
    }
    return to_numpy<S>(std::move(v));
}

py::array grpo_py(const py::object& scores, const py::kwargs& kwargs) {
    constexpr const char* fn = "rollout.grpo_advantages";
    return dispatch(fn, "scores", scores, [&](auto tag) {
        using S = decltype(tag);
        Kw kw(fn, kwargs);
        GRPOOptions o;
        kw.choose("preset", o,
                  {{"paper", GRPOOptions{}},
                   {"verl", GRPOOptions::verl()},
                   {"trl", GRPOOptions::trl()},
                   {"openrlhf", GRPOOptions::openrlhf()},
                   {"dr_grpo", GRPOOptions::dr_grpo()},
                   {"dler", GRPOOptions::dler()}});
        kw.choose("scale", o.scale,
                  {{"group", AdvantageScale::Group},
                   {"batch", AdvantageScale::Batch},
                   {"none", AdvantageScale::None}});
        kw.choose("std_kind", o.std_kind,
                  {{"sample", StdKind::Sample}, {"population", StdKind::Population}});
        kw.get("epsilon", o.epsilon);
        kw.get("std_floor", o.std_floor);
        singleton(kw, o.singleton);
        nan_scores(kw, o.nan_scores);
        const rlpo::ConstMatMap<S> s = view<S>(fn, "scores", scores, 1);
        const Groups g = groups_of(kw, s.rows());
        kw.finish();
        return values<S>([&] { return grpo_advantages(s, g, o); });
    });
}

py::array rloo_py(const py::object& scores, const py::kwargs& kwargs) {
    constexpr const char* fn = "rollout.rloo_advantages";
    return dispatch(fn, "scores", scores, [&](auto tag) {
        using S = decltype(tag);
        Kw kw(fn, kwargs);
        RLOOOptions o;
        kw.choose(
            "preset", o,
            {{"paper", RLOOOptions{}}, {"verl", RLOOOptions::verl()}, {"trl", RLOOOptions::trl()}});
        singleton(kw, o.singleton);
        nan_scores(kw, o.nan_scores);
        const rlpo::ConstMatMap<S> s = view<S>(fn, "scores", scores, 1);
        const Groups g = groups_of(kw, s.rows());
        kw.finish();
        return values<S>([&] { return rloo_advantages(s, g, o); });
    });
}

py::array broadcast_py(const py::object& seq_values, const py::object& mask) {
    constexpr const char* fn = "rollout.broadcast_to_tokens";
    return dispatch(fn, "mask", mask, [&](auto tag) {
        using S = decltype(tag);
        const rlpo::ConstMatMap<S> m = view<S>(fn, "mask", mask);
        const rlpo::ConstMatMap<S> a = view<S>(fn, "seq_values", seq_values, 1, "mask");
        rlpo::Mat<S> out;
        {
            py::gil_scoped_release nogil;
            out = broadcast_to_tokens(a, m);
        }
        return to_numpy<S>(std::move(out));
    });
}

}  // namespace

void bind_rollout(py::module_ m) {
    m.def("grpo_advantages", &grpo_py, py::arg("scores"));
    m.def("rloo_advantages", &rloo_py, py::arg("scores"));
    m.def("broadcast_to_tokens", &broadcast_py, py::arg("seq_values"), py::arg("mask"));
}

}  // namespace rlpo_py
