#pragma once
// Long double references shared by the tests of extreme inputs (independent of the library's
// kernels: direct formulas, evaluated with the 64-bit mantissa of x87 long double).
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace rlpo_test {

using LD = long double;

/// log-softmax of x/τ in long double (−inf entries stay −inf).
inline std::vector<LD> log_softmax_ld(const std::vector<LD>& x, LD tau = 1) {
    LD m = -std::numeric_limits<LD>::infinity();
    for (LD v : x) m = std::max(m, v / tau);
    LD s = 0;
    for (LD v : x) s += std::exp(v / tau - m);
    std::vector<LD> out(x.size());
    for (std::size_t j = 0; j < x.size(); ++j) out[j] = x[j] / tau - m - std::log(s);
    return out;
}

/// Entropy −Σ p log p of softmax(x/τ) in long double (p = 0 entries contribute 0).
inline LD entropy_ld(const std::vector<LD>& x, LD tau = 1) {
    LD h = 0;
    for (LD l : log_softmax_ld(x, tau))
        if (l > -std::numeric_limits<LD>::infinity()) h -= std::exp(l) * l;
    return h;
}

/// Row n of a matrix, widened to long double.
template <class M>
std::vector<LD> row_ld(const M& x, Eigen::Index n) {
    std::vector<LD> r(static_cast<std::size_t>(x.cols()));
    for (Eigen::Index j = 0; j < x.cols(); ++j)
        r[static_cast<std::size_t>(j)] = static_cast<LD>(x(n, j));
    return r;
}

}  // namespace rlpo_test
