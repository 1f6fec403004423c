// The compiled core of the `rlpo` Python package (`rlpo._rlpo`): one submodule per C++
// namespace, and the translation of rlpo's two exceptions.
#include "common.hpp"

#include <rlpo/core/threads.hpp>
#include <rlpo/version.hpp>

#include <memory>

namespace {
/// `with rlpo.thread_limit(n):` — an rlpo::ThreadLimit for the calling thread while the block
/// runs (entered and left on that thread, as Python's `with` is).
struct ThreadLimitBlock {
    int threads = 0;
    std::unique_ptr<rlpo::ThreadLimit> active;
};
}  // namespace

PYBIND11_MODULE(_rlpo, m) {
    namespace py = pybind11;
    m.doc() = "rlpo: RL post-training objectives (values, exact gradients, metrics)";
    m.attr("__version__") = std::to_string(RLPO_VERSION_MAJOR) + "." +
                            std::to_string(RLPO_VERSION_MINOR) + "." +
                            std::to_string(RLPO_VERSION_PATCH);
    // rlpo::numerical_error → rlpo.NumericalError (an ArithmeticError); rlpo::invalid_argument
    // → ValueError with the C++ message (pybind11 maps std::invalid_argument to ValueError;
    // registered explicitly so that the mapping does not depend on that default).
    static py::exception<rlpo::numerical_error> numerical(m, "NumericalError",
                                                          PyExc_ArithmeticError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const rlpo::numerical_error& e) {
            PyErr_SetString(numerical.ptr(), e.what());
        } catch (const rlpo::invalid_argument& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });
    py::class_<ThreadLimitBlock>(
        m, "thread_limit",
        "with rlpo.thread_limit(n): every rlpo call this thread makes in the block runs on n "
        "threads (0: OpenMP's setting); see rlpo.threads_per_call()")
        .def(py::init([](int threads) {
                 RLPO_CHECK(threads >= 0, "thread_limit",
                            "threads: must be >= 0 (0: no limit), given ", threads);
                 return ThreadLimitBlock{threads, nullptr};
             }),
             py::arg("threads"))
        .def(
            "__enter__",
            [](ThreadLimitBlock& b) -> ThreadLimitBlock& {
                b.active = std::make_unique<rlpo::ThreadLimit>(b.threads);
                return b;
            },
            py::return_value_policy::reference)
        .def("__exit__", [](ThreadLimitBlock& b, const py::args&) {
            b.active.reset();
            return false;
        });
    m.def("threads_per_call", &rlpo::threads_per_call,
          "the threads an rlpo call made now from this thread would use at most");
    rlpo_py::bind_policy(m.def_submodule("policy", "policy-gradient surrogates (grad: logp)"));
    rlpo_py::bind_penalties(m.def_submodule("penalties", "KL penalties (grad: logp)"));
    rlpo_py::bind_distill(m.def_submodule("distill", "distillation divergences (grad: logits)"));
    rlpo_py::bind_rollout(m.def_submodule("rollout", "advantages (values only)"));
    rlpo_py::bind_preference(
        m.def_submodule("preference", "preference losses (grad: policy sequence log-probs)"));
}
