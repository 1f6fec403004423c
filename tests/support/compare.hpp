#pragma once
// Tolerance helpers shared by the tests.
//
// `max_rel_err(a, ref)`: max_j |a_j − ref_j| / max(|ref_j|, scale), with scale = max(max_j
// |ref_j|·1e-3, tiny): an entry-wise relative error that does not explode on entries that are
// tiny next to the rest of the array. Non-finite entries must match exactly (same inf, both NaN).
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace rlpo_test {

template <class A, class B>
double max_rel_err(const A& a_in, const B& ref_in) {
    const rlpo::Mat<double> a = a_in.template cast<double>();
    const rlpo::Mat<double> ref = ref_in.template cast<double>();
    if (a.rows() != ref.rows() || a.cols() != ref.cols())
        return std::numeric_limits<double>::infinity();
    double scale = 0.0;
    for (rlpo::Index k = 0; k < ref.size(); ++k)
        if (std::isfinite(ref.data()[k])) scale = std::max(scale, std::abs(ref.data()[k]));
    scale = std::max(scale * 1e-3, 1e-300);
    double worst = 0.0;
    for (rlpo::Index k = 0; k < ref.size(); ++k) {
        const double x = a.data()[k], y = ref.data()[k];
        if (!std::isfinite(y) || !std::isfinite(x)) {
            if (!(x == y || (std::isnan(x) && std::isnan(y))))
                return std::numeric_limits<double>::infinity();
            continue;
        }
        worst = std::max(worst, std::abs(x - y) / std::max(std::abs(y), scale));
    }
    return worst;
}

/// Relative error of a scalar; `floor` bounds the denominator for references near 0.
inline double rel_err(double a, double ref, double floor = 1e-12) {
    if (!std::isfinite(ref) || !std::isfinite(a))
        return a == ref ? 0.0 : std::numeric_limits<double>::infinity();
    return std::abs(a - ref) / std::max(std::abs(ref), floor);
}

/// Tolerances of the differential tests: ≤1e-10 relative in double, ≤1e-5 in float. Float
/// results are compared with the reference evaluated in float64 on the same (float-rounded)
/// inputs, i.e. with the exact answer for those inputs.
template <class S>
constexpr double ref_tol() {
    return sizeof(S) == 4 ? 1e-5 : 1e-10;
}

/// Error of a type-S gradient against a float64 reference on the same inputs: entry-wise
/// (`max_rel_err`) for double; normwise for float and bfloat16 (max |g − ref| / max |ref|),
/// because entries such as q_j − p_j cancel and no float evaluation resolves them below float
/// precision of the row's scale.
template <class S>
double grad_err(const rlpo::Mat<double>& g, const rlpo::Mat<double>& ref) {
    if (std::is_same<S, double>::value) return max_rel_err(g, ref);
    return (g - ref).cwiseAbs().maxCoeff() / std::max(ref.cwiseAbs().maxCoeff(), 1e-300);
}
/// Tolerance of `grad_err<S>`: 1e-10 (double), 1e-5 (float), 1e-2 (bfloat16).
template <class S>
constexpr double grad_tol() {
    return std::is_same<S, double>::value ? 1e-10 : (std::is_same<S, float>::value ? 1e-5 : 1e-2);
}
/// Relative tolerance of a type-S loss value against the float64 reference: 1e-10 (double),
/// 2e-5 (float and bfloat16 inputs, accumulated in float or double).
template <class S>
constexpr double value_tol() {
    return std::is_same<S, double>::value ? 1e-10 : 2e-5;
}

}  // namespace rlpo_test
