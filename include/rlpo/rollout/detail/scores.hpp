#pragma once
/// \file
/// Internal helpers of the rollout module: reading per-response score vectors, their
/// non-finite policy, and group statistics accumulated in double.

#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/groups.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace rlpo::rollout {

/// What a NaN per-response score means.
///
/// * `Throw` (rlpo's default): a NaN score is an error naming the response.
/// * `AsZero`: a NaN score counts as 0 — TRL's GRPO/RLOO trainers sum the reward functions with
///   `nansum`, so a sample for which every reward function returned None gets reward 0.
///
/// ±inf scores are always an error (group statistics are undefined).
enum class NanScores { Throw, AsZero };

namespace detail {

/// The entries of a vector input (N×1, 1×N or empty; one entry per response) as doubles, each
/// passed through `check(k, value)`, which returns the value to keep (or throws).
template <class D, class F>
inline std::vector<double> read_vector(const char* fn, const char* name,
                                       const Eigen::MatrixBase<D>& x, F&& check) {
    const auto& v = x.derived();
    RLPO_CHECK(v.rows() == 1 || v.cols() == 1 || v.size() == 0, fn, name,
               ": expected a vector (one entry per response), given shape [", v.rows(), ", ",
               v.cols(), "]");
    std::vector<double> out(static_cast<std::size_t>(v.size()));
    const bool col = v.cols() == 1;
    for (Index k = 0; k < v.size(); ++k)
        out[static_cast<std::size_t>(k)] = check(k, static_cast<double>(col ? v(k, 0) : v(0, k)));
    return out;
}

/// Scores: finite; NaN rejected or, with `NanScores::AsZero`, counted as 0 (TRL).
template <class D>
inline std::vector<double> read_scores(const char* fn, const char* name,
                                       const Eigen::MatrixBase<D>& x,
                                       NanScores nan = NanScores::Throw) {
    return read_vector(fn, name, x, [&](Index k, double s) {
        if (std::isnan(s)) {
            RLPO_CHECK(nan == NanScores::AsZero, fn, name, ": NaN at response ", k,
                       " (NaN scores are rejected; NanScores::AsZero counts them as 0, as TRL "
                       "does)");
            s = 0.0;
        }
        RLPO_CHECK(std::isfinite(s), fn, name, ": non-finite value ", s, " at response ", k,
                   " (group statistics are undefined)");
        return s;
    });
}

/// Lengths (or any non-negative per-response quantity): finite and ≥ 0.
template <class D>
inline std::vector<double> read_nonnegative(const char* fn, const char* name,
                                            const Eigen::MatrixBase<D>& x) {
    return read_vector(fn, name, x, [&](Index k, double s) {
        RLPO_CHECK(std::isfinite(s) && s >= 0, fn, name,
                   ": entries must be finite and >= 0, given ", s, " at response ", k);
        return s;
    });
}

/// Throws unless `n` entries match the groups.
inline void check_groups(const char* fn, const char* name, const Groups& g, std::size_t n) {
    RLPO_CHECK(g.num_responses() == static_cast<Index>(n), fn, name, ": has ", n,
               " entries, but the groups cover ", g.num_responses(), " responses");
}

/// Mean of x[b, e). Any finite entries give a finite mean: when the plain sum overflows, the
/// mean is taken as Σ x/n (each term at most max |x|).
inline double mean(const std::vector<double>& x, Index b, Index e) {
    if (e <= b) return 0.0;
    double s = 0.0;
    for (Index k = b; k < e; ++k) s += x[static_cast<std::size_t>(k)];
    const double n = static_cast<double>(e - b);
    if (std::isfinite(s)) return s / n;
    s = 0.0;  // rare path: the sum overflowed
    for (Index k = b; k < e; ++k) s += x[static_cast<std::size_t>(k)] / n;
    return s;
}

/// x − μ for finite x and μ, without overflow where the difference itself is representable
/// at half scale: the caller divides the result by `scale` (1, or 2 when x − μ overflowed).
struct Centred {
    double d;
    double scale;
};
inline Centred centred(double x, double mu) {
    const double d = x - mu;
    if (std::isfinite(d)) return {d, 1.0};
    return {x / 2 - mu / 2, 2.0};
}

/// (x − μ)/den for finite x, μ and den > 0, exact where the quotient is representable even
/// when x − μ overflows a double.
inline double centred_ratio(double x, double mu, double den) {
    const Centred c = centred(x, mu);
    return c.scale == 1.0 ? c.d / den : c.d / (den / c.scale);
}

/// A standard deviation as D·r (D = 1 on the plain path, the largest |x − μ| on the scaled
/// one), so that a std beyond the double range still divides exactly.
struct ScaledStd {
    double D = 1.0;
    double r = 0.0;
    double value() const { return D * r; }
};

/// Standard deviation of x[b, e) around `mu` as D·r: sample (n − 1) or population (n) flavour;
/// 0 when the flavour's denominator is ≤ 0. Any finite entries give the correct std: when
/// Σ (x − μ)² overflows or underflows, the sum of squares is taken on (x − μ)/D with
/// D = max |x − μ| (a scaled sum of squares; x − μ formed at half scale where it overflows).
inline ScaledStd stddev_scaled(const std::vector<double>& x, Index b, Index e, double mu,
                               bool sample) {
    double ss = 0.0;
    bool any = false;
    for (Index k = b; k < e; ++k) {
        const double d = x[static_cast<std::size_t>(k)] - mu;
        ss += d * d;
        any = any || d != 0;
    }
    const double n = static_cast<double>(e - b) - (sample ? 1.0 : 0.0);
    if (!(n > 0) || !any) return {};
    if (std::isfinite(ss) && ss >= 1e-280) return {1.0, std::sqrt(ss / n)};
    // rare path: scaled sum of squares (huge or tiny deviations)
    bool half = false;
    for (Index k = b; k < e; ++k)
        half = half || centred(x[static_cast<std::size_t>(k)], mu).scale != 1.0;
    const auto dev = [&](Index k) {
        const double xk = x[static_cast<std::size_t>(k)];
        return half ? xk / 2 - mu / 2 : xk - mu;
    };
    double D = 0.0;
    for (Index k = b; k < e; ++k) D = std::max(D, std::abs(dev(k)));
    double q = 0.0;
    for (Index k = b; k < e; ++k) {
        const double d = dev(k) / D;
        q += d * d;
    }
    // half scale: the deviations were halved, D is half the largest |x − μ|
    return {half ? 2.0 * D : D, std::sqrt(q / n)};
}

/// (d·scale)/(σ + ε) for a difference given as a `Centred` and σ = D·r as a `ScaledStd`,
/// formed as (d/(D/scale))/(r + ε/D): σ is never rounded first, so a std in the denormal range
/// (scores of 5e-324, where D·r rounds to 0 or to the smallest denormal) still divides
/// exactly. 0 where σ + ε = 0; where ε/D overflows (ε ≫ σ), d·scale/(σ + ε) as it stands.
inline double ratio_to_std(const Centred& c, const ScaledStd& sd, double eps) {
    const double den = sd.r + eps / sd.D;
    if (!(den > 0)) return 0.0;
    if (!std::isfinite(den)) return c.d / ((sd.value() + eps) / c.scale);
    return c.d / (sd.D / c.scale) / den;
}

/// The standard deviation as one double (+inf only where the true std exceeds the range).
inline double stddev(const std::vector<double>& x, Index b, Index e, double mu, bool sample) {
    return stddev_scaled(x, b, e, mu, sample).value();
}

/// True when every entry of x[b, e) is bitwise the same value.
inline bool all_equal(const std::vector<double>& x, Index b, Index e) {
    for (Index k = b + 1; k < e; ++k)
        if (x[static_cast<std::size_t>(k)] != x[static_cast<std::size_t>(b)]) return false;
    return true;
}

/// Run `f(i, mask_row)` for every row of a `[B, T]` mask (rows in parallel with OpenMP; each row
/// is independent, so the result does not depend on the thread count), validating the mask on
/// the way; throws the mask's error message when an entry is negative or non-finite.
template <class S, class F>
inline void for_mask_rows(const char* fn, const ConstMatRef<S>& m, F&& f) {
    const Index B = m.rows(), T = m.cols();
    std::vector<char> bad(static_cast<std::size_t>(B), 0);
    ::rlpo::detail::parallel_for(B, B * T > 32768, [&](Index i) {
        const S* row = m.data() + i * m.outerStride();
        // branch-free (vectorised): every entry ≥ 0 and finite (NaN fails both compares)
        int ok = 1;
        for (Index t = 0; t < T; ++t)
            ok &= static_cast<int>(row[t] >= S(0)) &
                  static_cast<int>(row[t] <= std::numeric_limits<S>::max());
        bad[static_cast<std::size_t>(i)] = ok ? 0 : 1;
        f(i, row);
    });
    if (std::find(bad.begin(), bad.end(), char(1)) != bad.end()) ::rlpo::detail::check_mask(fn, m);
}

/// `to_vec` for computed advantages: an entry that is not finite in S (a true overflow of
/// finite scores, e.g. s − μ beyond the double range) → rlpo::numerical_error.
template <class S>
inline Vec<S> to_vec_checked(const char* fn, const std::vector<double>& x) {
    for (std::size_t k = 0; k < x.size(); ++k)
        if (!(std::abs(static_cast<S>(x[k])) < std::numeric_limits<S>::infinity()))
            ::rlpo::detail::fail_numerical(fn, "the advantage of response ", k,
                                           " overflows the storage type (", x[k], ")");
    Vec<S> v(static_cast<Index>(x.size()));
    for (std::size_t k = 0; k < x.size(); ++k) v(static_cast<Index>(k)) = static_cast<S>(x[k]);
    return v;
}

template <class S>
inline Vec<S> to_vec(const std::vector<double>& x) {
    Vec<S> v(static_cast<Index>(x.size()));
    for (std::size_t k = 0; k < x.size(); ++k) v(static_cast<Index>(k)) = static_cast<S>(x[k]);
    return v;
}

}  // namespace detail
}  // namespace rlpo::rollout
