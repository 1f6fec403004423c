#pragma once
/// \file
/// Central finite-difference gradient checker, shared by every objective's test.
///
/// `check_gradient(f, x, analytic)` perturbs each entry of x (double) by ±h_j, with
/// h_j = step · max(1, |x_j|), evaluates the central difference (f(x+h) − f(x−h)) / 2h_j and
/// compares it with `analytic` entry by entry. The report gives the largest absolute error,
/// the largest error relative to max(|fd|, |analytic|, floor), and where it occurred, so a
/// test asserts `report.max_rel_err < tol` and prints the report on failure. Entries for which
/// `skip(j)` returns true (e.g. positions next to a kink of a clipped objective) are left out.
///
/// Not part of the umbrella header; include <rlpo/testing/gradcheck.hpp> in tests.

#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <ostream>
#include <sstream>
#include <string>

namespace rlpo::testing {

struct GradCheckOptions {
    double step = 1e-6;   ///< relative step h
    double floor = 1e-8;  ///< denominator floor of the relative error
};

struct GradCheckReport {
    double max_abs_err = 0.0;
    double max_rel_err = 0.0;
    Index worst = -1;  ///< row-major index of the worst relative error
    double worst_fd = 0.0;
    double worst_analytic = 0.0;
    Index checked = 0;

    std::string str() const {
        std::ostringstream os;
        os << "gradcheck: checked " << checked << " entries, max_abs_err " << max_abs_err
           << ", max_rel_err " << max_rel_err << " at index " << worst << " (fd " << worst_fd
           << ", analytic " << worst_analytic << ")";
        return os.str();
    }
};

inline std::ostream& operator<<(std::ostream& os, const GradCheckReport& r) {
    return os << r.str();
}

namespace detail {

/// Calls `visit(j, fd)` with the central difference fd at every entry j of x that is checked
/// (not skipped, finite: −inf log-probs etc. have no neighbourhood).
template <class F, class Visit>
void central_differences(F&& f, const Mat<double>& x, const GradCheckOptions& opt,
                         const std::function<bool(Index)>& skip, Visit&& visit) {
    Mat<double> xp = x;
    for (Index j = 0; j < x.size(); ++j) {
        if (skip && skip(j)) continue;
        const double x0 = x.data()[j];
        if (!std::isfinite(x0)) continue;
        const double h = opt.step * std::max(1.0, std::abs(x0));
        xp.data()[j] = x0 + h;
        const double fp = f(xp);
        xp.data()[j] = x0 - h;
        const double fm = f(xp);
        xp.data()[j] = x0;
        visit(j, (fp - fm) / (2 * h));
    }
}

}  // namespace detail

/// f: Mat<double> → double. x: the point. analytic: ∂f/∂x at x (same shape).
template <class F>
GradCheckReport check_gradient(F&& f, const Mat<double>& x, const Mat<double>& analytic,
                               const GradCheckOptions& opt = {},
                               const std::function<bool(Index)>& skip = {}) {
    GradCheckReport rep;
    detail::central_differences(f, x, opt, skip, [&](Index j, double fd) {
        const double an = analytic.data()[j];
        const double abs_err = std::abs(fd - an);
        const double rel_err = abs_err / std::max({std::abs(fd), std::abs(an), opt.floor});
        ++rep.checked;
        rep.max_abs_err = std::max(rep.max_abs_err, abs_err);
        if (rel_err > rep.max_rel_err || rep.worst < 0) {
            rep.max_rel_err = std::max(rep.max_rel_err, rel_err);
            rep.worst = j;
            rep.worst_fd = fd;
            rep.worst_analytic = an;
        }
    });
    return rep;
}

/// The error measure above, applied to a gradient whose scale is known: an entry passes when
/// |fd − analytic| ≤ atol + rtol·|fd|. Returns the number of failing entries.
template <class F>
Index count_gradient_failures(F&& f, const Mat<double>& x, const Mat<double>& analytic, double rtol,
                              double atol, const GradCheckOptions& opt = {},
                              const std::function<bool(Index)>& skip = {}) {
    Index bad = 0;
    detail::central_differences(f, x, opt, skip, [&](Index j, double fd) {
        if (std::abs(fd - analytic.data()[j]) > atol + rtol * std::abs(fd)) ++bad;
    });
    return bad;
}

}  // namespace rlpo::testing
