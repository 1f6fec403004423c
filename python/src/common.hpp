#pragma once
// Shared pieces of the Python bindings: reading NumPy arrays in place (no copy, no cast),
// keyword arguments with the C++ option names, the Normalizer keywords, the gradient
// destination (`out=`) and the (value, grad, metrics) tuple the Python layer wraps as a Result.
//
// Every array argument must be a NumPy array (the Python layer turns torch CPU tensors into
// NumPy views with `.numpy()`), C-contiguous, of the dtype of the call's first array (float32
// or float64). Anything else is a TypeError (type, dtype) or ValueError (layout, shape) naming
// the argument. The C++ call runs with the GIL released, after every Python object was read.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace rlpo_py {

namespace py = pybind11;

/// "rlpo.policy.ppo_clip: logp: <what>" (the form of the C++ messages).
inline std::string message(const char* fn, const char* name, const std::string& what) {
    return std::string("rlpo.") + fn + ": " + name + ": " + what;
}

inline std::string type_name(const py::handle& h) {
    return py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>();
}

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

template <class S>
inline const char* scalar_name() {
    return std::is_same<S, float>::value ? "float32" : "float64";
}

/// The array behind argument `name`: a NumPy array, else TypeError.
inline py::array as_array(const char* fn, const char* name, const py::handle& obj) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(message(
            fn, name, "expected a NumPy array or a torch CPU tensor, given " + type_name(obj)));
    return py::reinterpret_borrow<py::array>(obj);
}

template <class S>
inline bool has_dtype(const py::array& a) {
    return py::isinstance<py::array_t<S>>(a);
}

/// Checks `a` is C-contiguous, of dtype S and of `ndim` dimensions.
template <class S>
inline void check_array(const char* fn, const char* name, const py::array& a, int ndim,
                        const char* dtype_of = nullptr) {
    if (!has_dtype<S>(a))
        throw py::type_error(message(
            fn, name,
            std::string("expected dtype ") + scalar_name<S>() +
                (dtype_of ? std::string(" (the dtype of ") + dtype_of + ")" : std::string()) +
                ", given " + dtype_name(a)));
    if (a.ndim() != ndim)
        throw py::value_error(message(fn, name,
                                      "expected a " + std::to_string(ndim) + "-D array, given " +
                                          std::to_string(a.ndim()) + "-D"));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(
            message(fn, name,
                    "must be C-contiguous (rlpo reads it in place; call .contiguous() / "
                    "np.ascontiguousarray first)"));
}

/// A read-only `[rows, cols]` view of a 2-D array (1-D arrays: one column).
template <class S>
inline rlpo::ConstMatMap<S> view(const char* fn, const char* name, const py::handle& obj,
                                 int ndim = 2, const char* dtype_of = nullptr) {
    const py::array a = as_array(fn, name, obj);
    check_array<S>(fn, name, a, ndim, dtype_of);
    const rlpo::Index rows = ndim == 0 ? 1 : static_cast<rlpo::Index>(a.shape(0));
    const rlpo::Index cols = ndim == 2 ? static_cast<rlpo::Index>(a.shape(1)) : 1;
    return rlpo::ConstMatMap<S>(static_cast<const S*>(a.data()), rows, cols);
}

/// Calls `body.template operator()<S>()` with S the dtype of `first` (float32 / float64),
/// else TypeError naming the argument.
template <class Body>
inline auto dispatch(const char* fn, const char* name, const py::handle& obj, Body&& body) {
    const py::array a = as_array(fn, name, obj);
    if (has_dtype<float>(a)) return body(float{});
    if (has_dtype<double>(a)) return body(double{});
    throw py::type_error(
        message(fn, name, "expected dtype float32 or float64, given " + dtype_name(a)));
}

/// Keyword arguments read by their C++ option names; unread keywords are a TypeError.
class Kw {
public:
    Kw(const char* fn, const py::kwargs& kw) : fn_(fn) {
        for (auto item : kw)
            args_[py::str(item.first).cast<std::string>()] =
                py::reinterpret_borrow<py::object>(item.second);
    }
    const char* fn() const { return fn_; }

    /// Whether `name` was given (None included).
    bool has(const char* name) {
        known_.insert(name);
        return args_.count(name) != 0;
    }
    /// The object given for `name` (marked as read), or a null handle.
    py::object take(const char* name) {
        known_.insert(name);
        const auto it = args_.find(name);
        if (it == args_.end()) return py::object();
        used_.insert(name);
        return it->second;
    }
    /// `x` = the value of `name` when given (None is a TypeError); returns whether given.
    template <class T>
    bool get(const char* name, T& x) {
        py::object o = take(name);
        if (!o) return false;
        if (o.is_none())
            throw py::type_error(
                message(fn_, name, "None is not accepted (omit it for the default)"));
        x = cast<T>(name, o);
        return true;
    }
    /// `x` = the value of `name` when given; None resets it (std::nullopt).
    template <class T>
    bool get_opt(const char* name, std::optional<T>& x) {
        py::object o = take(name);
        if (!o) return false;
        if (o.is_none())
            x.reset();
        else
            x = cast<T>(name, o);
        return true;
    }
    /// A string keyword mapped through `table` (ValueError listing the valid names); None
    /// keeps the default.
    template <class E>
    bool choose(const char* name, E& x, std::initializer_list<std::pair<const char*, E>> table) {
        py::object o = take(name);
        if (!o || o.is_none()) return false;
        const std::string s = cast<std::string>(name, o);
        std::string valid;
        for (const auto& row : table) {
            if (s == row.first) {
                x = row.second;
                return true;
            }
            valid += std::string(valid.empty() ? "" : ", ") + "'" + row.first + "'";
        }
        throw py::value_error(
            message(fn_, name, "unknown value '" + s + "' (valid: " + valid + ")"));
    }
    /// TypeError for every keyword that was given but not read.
    void finish() const {
        for (const auto& a : args_) {
            if (used_.count(a.first)) continue;
            std::string valid;
            for (const auto& k : known_) valid += std::string(valid.empty() ? "" : ", ") + k;
            throw py::type_error(std::string("rlpo.") + fn_ +
                                 "() got an unexpected keyword argument '" + a.first +
                                 "' (accepted here: " + valid + ")");
        }
    }

private:
    template <class T>
    T cast(const char* name, const py::object& o) const {
        if constexpr (std::is_same<T, bool>::value) {
            if (!py::isinstance<py::bool_>(o) && !py::isinstance<py::int_>(o))
                throw py::type_error(message(fn_, name, "expected a bool, given " + type_name(o)));
        }
        if constexpr (std::is_same<T, std::string>::value) {
            if (!py::isinstance<py::str>(o))
                throw py::type_error(message(fn_, name, "expected a str, given " + type_name(o)));
        }
        try {
            return o.cast<T>();
        } catch (const py::cast_error&) {
            throw py::type_error(message(fn_, name, "cannot convert " + type_name(o)));
        }
    }

    const char* fn_;
    std::map<std::string, py::object> args_;
    std::set<std::string> used_;
    std::set<std::string> known_;
};

/// The Normalizer keywords: `aggregation` (any name rlpo::parse_aggregation accepts),
/// `num_tokens`, `num_seqs`, `norm_constant`, `length_epsilon`, `count_epsilon`,
/// `sum_norm_seq_mean`.
inline rlpo::Normalizer normalizer(Kw& kw) {
    rlpo::Normalizer n;
    std::string agg;
    if (kw.get("aggregation", agg)) n.mode = rlpo::parse_aggregation(agg);
    kw.get_opt("num_tokens", n.num_tokens);
    kw.get_opt("num_seqs", n.num_seqs);
    kw.get_opt("norm_constant", n.norm_constant);
    kw.get("length_epsilon", n.length_epsilon);
    kw.get("count_epsilon", n.count_epsilon);
    kw.get("sum_norm_seq_mean", n.sum_norm_seq_mean);
    return n;
}

/// Where the gradient goes: keywords `out` (a C-contiguous writable array of the gradient's
/// shape and dtype, written in place), `accumulate` (add into `out` instead of overwriting),
/// `coef` (scales value and gradient, GradientOut::coef) and `compute_grad` (False: value and
/// metrics only).
template <class S>
struct Out {
    rlpo::GradientOut<S> out{};
    py::object array;  ///< the caller's `out`, returned as the result's grad
    rlpo::Index rows = 0, cols = 0;

    Out(Kw& kw, rlpo::Index r, rlpo::Index c, int ndim = 2) : rows(r), cols(c) {
        const char* fn = kw.fn();
        double coef = 1.0;
        bool accumulate = false, compute = true;
        kw.get("coef", coef);
        kw.get("accumulate", accumulate);
        kw.get("compute_grad", compute);
        py::object o = kw.take("out");
        if (o && !o.is_none()) {
            const py::array a = as_array(fn, "out", o);
            check_array<S>(fn, "out", a, ndim, "the inputs");
            const rlpo::Index ar = static_cast<rlpo::Index>(a.shape(0));
            const rlpo::Index ac = ndim == 2 ? static_cast<rlpo::Index>(a.shape(1)) : 1;
            if (ar != r || ac != c)
                throw py::value_error(message(
                    fn, "out",
                    "expected shape (" + std::to_string(r) + ", " + std::to_string(c) +
                        "), given (" + std::to_string(ar) + ", " + std::to_string(ac) + ")"));
            if (!a.writeable()) throw py::value_error(message(fn, "out", "is read-only"));
            rlpo::MatMap<S> g(static_cast<S*>(const_cast<void*>(a.data())), r, c);
            out = accumulate ? rlpo::add_to<S>(g, coef) : rlpo::write_to<S>(g, coef);
            array = o;
        } else if (accumulate) {
            throw py::value_error(message(fn, "accumulate", "needs an out= array to add into"));
        } else if (!compute) {
            out = rlpo::no_grad<S>();
            out.coef = coef;
        } else {
            out.coef = coef;
        }
    }
};

/// A NumPy array that owns `m` (moved; no copy).
template <class S>
inline py::array to_numpy(rlpo::Mat<S>&& m) {
    const auto r = static_cast<py::ssize_t>(m.rows()), c = static_cast<py::ssize_t>(m.cols());
    if (m.size() == 0) return py::array_t<S>({r, c});
    auto* p = new rlpo::Mat<S>(std::move(m));
    py::capsule owner(p, [](void* q) { delete static_cast<rlpo::Mat<S>*>(q); });
    const auto s = static_cast<py::ssize_t>(sizeof(S));
    return py::array_t<S>({r, c}, {c * s, s}, p->data(), owner);
}

inline py::dict metrics_dict(const rlpo::Metrics& m) {
    py::dict d;
    for (const auto& e : m) d[py::str(e.first)] = e.second.value();
    return d;
}

/// (value, grad, metrics): grad is the caller's `out`, a new array, or None (no gradient).
template <class S>
inline py::tuple pack(rlpo::Result<S>&& r, const Out<S>& o) {
    py::object grad = py::none();
    if (o.array)
        grad = o.array;
    else if (o.out.mode == rlpo::GradMode::Own)
        grad = to_numpy<S>(std::move(r.grad));
    return py::make_tuple(r.value, grad, metrics_dict(r.metrics));
}

/// Runs `f()` (the C++ call, returning a Result<S>) without the GIL and packs its result.
template <class S, class F>
inline py::tuple call(const Out<S>& o, F&& f) {
    rlpo::Result<S> r;
    {
        py::gil_scoped_release nogil;
        r = f();
    }
    return pack<S>(std::move(r), o);
}

/// A 1-D NumPy array that owns `v`.
template <class S>
inline py::array to_numpy(rlpo::Vec<S>&& v) {
    const auto n = static_cast<py::ssize_t>(v.size());
    if (n == 0) return py::array_t<S>(n);
    auto* p = new rlpo::Vec<S>(std::move(v));
    py::capsule owner(p, [](void* q) { delete static_cast<rlpo::Vec<S>*>(q); });
    return py::array_t<S>({n}, {static_cast<py::ssize_t>(sizeof(S))}, p->data(), owner);
}

void bind_policy(py::module_ m);
void bind_penalties(py::module_ m);
void bind_distill(py::module_ m);
void bind_rollout(py::module_ m);
void bind_preference(py::module_ m);

}  // namespace rlpo_py
