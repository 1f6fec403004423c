#pragma once
/// \file
/// The two exceptions rlpo throws (bad input; a result that would not be finite) and the checks
/// that build their messages.
///
/// Every message has the form `rlpo::<function>(): <argument>: <what was wrong>`, e.g.
/// `rlpo::policy::ppo_clip(): old_logp: expected shape [4, 8] (same as logp), given [4, 7]`.

#include <rlpo/core/types.hpp>

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace rlpo {

/// Thrown for shape mismatches, hyperparameters outside their domain and non-finite inputs
/// (per the non-finite policy documented in docs/contract.md). Derives from
/// `std::invalid_argument`, so `catch (const std::invalid_argument&)` also catches it.
class invalid_argument : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

/// Thrown when inputs inside a function's documented range would give a non-finite value,
/// gradient or metric (an overflow the function cannot avoid: e.g. per-token losses of 1e308
/// summed over a batch). Derives from `std::runtime_error`; the message has the same form as
/// `invalid_argument`'s and names the quantity (and, where one is to blame, the position).
/// rlpo never returns a non-finite value, gradient or metric from finite inputs: it returns a
/// finite result or throws one of these two exceptions (docs/contract.md, section 5).
class numerical_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts>
[[noreturn]] inline void fail_numerical(const char* function, const Parts&... parts) {
    std::ostringstream os;
    os.precision(std::numeric_limits<double>::max_digits10);
    os << "rlpo::" << function << "(): ";
    (os << ... << parts);
    throw ::rlpo::numerical_error(os.str());
}

template <class... Parts>
[[noreturn]] inline void fail(const char* function, const Parts&... parts) {
    std::ostringstream os;
    os << "rlpo::" << function << "(): ";
    (os << ... << parts);
    throw ::rlpo::invalid_argument(os.str());
}

}  // namespace detail
}  // namespace rlpo

/// `RLPO_CHECK(cond, "policy::ppo_clip", "clip_low: must be > 0, given ", x)` throws
/// `rlpo::invalid_argument` with the message parts streamed after the function name.
#define RLPO_CHECK(cond, function, ...)                             \
    do {                                                            \
        if (!(cond)) ::rlpo::detail::fail((function), __VA_ARGS__); \
    } while (false)

namespace rlpo::detail {

/// `what` must have the shape of `like` (named `like_name`).
template <class A, class B>
inline void check_same_shape(const char* function, const char* name, const A& what,
                             const char* like_name, const B& like) {
    RLPO_CHECK(what.rows() == like.rows() && what.cols() == like.cols(), function, name,
               ": expected shape [", like.rows(), ", ", like.cols(), "] (same as ", like_name,
               "), given [", what.rows(), ", ", what.cols(), "]");
}

/// The inputs every policy-gradient surrogate takes — `old_logp`, `advantages` and `mask` — must
/// have the shape of `logp`.
template <class L, class O, class A, class M>
inline void check_surrogate_shapes(const char* function, const L& logp, const O& old_logp,
                                   const A& advantages, const M& mask) {
    check_same_shape(function, "old_logp", old_logp, "logp", logp);
    check_same_shape(function, "advantages", advantages, "logp", logp);
    check_same_shape(function, "mask", mask, "logp", logp);
}

/// A per-row vector (one entry per sequence) must have `rows` entries.
template <class A>
inline void check_length(const char* function, const char* name, const A& what, Index rows,
                         const char* like_name) {
    RLPO_CHECK(what.size() == rows, function, name, ": expected ", rows, " entries (rows of ",
               like_name, "), given ", what.size());
}

/// A scalar hyperparameter must be finite.
inline void check_finite_param(const char* function, const char* name, double value) {
    RLPO_CHECK(std::isfinite(value), function, name, ": must be finite, given ", value);
}

/// A scalar hyperparameter must be > 0 (and finite).
inline void check_positive(const char* function, const char* name, double value) {
    RLPO_CHECK(std::isfinite(value) && value > 0, function, name, ": must be > 0, given ", value);
}

/// A scalar hyperparameter must be ≥ 0 (and finite).
inline void check_nonnegative(const char* function, const char* name, double value) {
    RLPO_CHECK(std::isfinite(value) && value >= 0, function, name, ": must be >= 0, given ", value);
}

/// Report the first NaN of `x` at a position where `mask` is non-zero (called only after a
/// fused loop flagged one, so the search costs nothing on good input).
template <class X, class M>
[[noreturn]] inline void fail_nan(const char* function, const char* name, const X& x,
                                  const M& mask) {
    for (Index i = 0; i < x.rows(); ++i)
        for (Index t = 0; t < x.cols(); ++t)
            if (mask(i, t) != 0 && std::isnan(static_cast<double>(x(i, t))))
                fail(function, name, ": NaN at [", i, ", ", t,
                     "] under a non-zero mask (NaN is rejected; see the non-finite policy)");
    fail(function, name, ": NaN under a non-zero mask");
}

/// Validate a 0/1 (or fractional) token mask: finite and >= 0 everywhere.
template <class M>
inline void check_mask(const char* function, const M& mask) {
    using T = typename M::Scalar;
    // branch-free first (vectorised: one compare pair per entry); NaN fails both compares
    int ok = 1;
    for (Index i = 0; i < mask.rows(); ++i)
        for (Index t = 0; t < mask.cols(); ++t) {
            const T m = mask(i, t);
            ok &=
                static_cast<int>(m >= T(0)) & static_cast<int>(m <= std::numeric_limits<T>::max());
        }
    if (ok) return;
    for (Index i = 0; i < mask.rows(); ++i)
        for (Index t = 0; t < mask.cols(); ++t) {
            const double m = static_cast<double>(mask(i, t));
            if (!(std::isfinite(m) && m >= 0))
                fail(function, "mask: entries must be finite and >= 0, given ", m, " at [", i, ", ",
                     t, "]");
        }
}

}  // namespace rlpo::detail
