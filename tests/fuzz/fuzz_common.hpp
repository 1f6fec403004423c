#pragma once
// Shared decoding and checking for the libFuzzer targets (tests/fuzz/README.md).
//
// Every target decodes the fuzz bytes into shapes, a scalar type, options, names taken from
// the parsers' tables and input values (ordinary values, extremes, denormals, 0, ±inf, NaN
// under masked positions, masks of 0/1 and fractional weights), calls an entry point and
// asserts THE RULE (docs/contract.md, section 5):
//
//   * the call throws rlpo::invalid_argument or rlpo::numerical_error, or
//   * the value, every gradient entry and every metric are finite, and gradient entries at
//     mask 0 are exactly 0 (overwritten) or untouched (added into);
//   * a NaN under a non-zero mask in an input the entry point reads must throw
//     rlpo::invalid_argument (documented everywhere);
//   * an exception naming a NaN when no unmasked input is non-finite means a masked entry was
//     read: a violation.
//
// A violation prints what was wrong and the decoded case, then aborts (libFuzzer saves the
// input as a crash file).

#include <fuzzer/FuzzedDataProvider.h>
#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace fz {

using rlpo::Index;
using rlpo::Mat;

// ------------------------------------------------------------------------------------------
// Case description and failure
// ------------------------------------------------------------------------------------------

/// The decoded case, written as it is decoded (printed only on a violation).
inline std::ostringstream& trace() {
    static std::ostringstream os;
    return os;
}
inline void reset_trace() {
    trace().str("");
    trace().clear();
    trace().precision(17);
}

[[noreturn]] inline void fail(const std::string& what) {
    std::cerr << "\n==== RULE VIOLATED: " << what << "\n==== case:\n"
              << trace().str() << "\n==== end of case\n";
    std::cerr.flush();
    std::abort();
}

template <class S>
void dump(const char* name, const Mat<S>& x) {
    auto& os = trace();
    os << name << " [" << x.rows() << ", " << x.cols() << "] =";
    for (Index i = 0; i < x.rows(); ++i) {
        os << "\n  ";
        for (Index j = 0; j < x.cols(); ++j) os << static_cast<double>(x(i, j)) << ' ';
    }
    os << '\n';
}

// ------------------------------------------------------------------------------------------
// Per-case bookkeeping: which documented-invalid inputs the case holds
// ------------------------------------------------------------------------------------------

struct Flags {
    bool nan_unmasked = false;        ///< a NaN under a non-zero mask in an input that is read
    bool nonfinite_unmasked = false;  ///< any ±inf / NaN under a non-zero mask (or unmasked)
};

/// Thrown by the checks to drop a case that hits a known hole (known_issues.hpp).
struct Skipped {
    const char* hole;
};

/// Whether the known-issue skips are on (RLPO_FUZZ_NO_SKIP=1 turns them off, to reproduce).
inline bool skips_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("RLPO_FUZZ_NO_SKIP");
        return !(e && e[0] == '1');
    }();
    return on;
}

inline Flags& flags() {
    static Flags f;
    return f;
}

// ------------------------------------------------------------------------------------------
// Values
// ------------------------------------------------------------------------------------------

enum class Dom {
    LogProb,   ///< mostly ≤ 0, −inf allowed
    Real,      ///< advantages, rewards, values: any sign
    Logit,     ///< logits
    Positive,  ///< lengths, weights ≥ 0
};

template <class S>
constexpr double huge() {
    return std::is_same<S, float>::value ? 3.0e38 : 1e300;
}
template <class S>
constexpr double denorm() {
    return static_cast<double>(std::numeric_limits<S>::denorm_min());
}

/// One input value: ordinary (most draws), or an extreme / special one.
template <class S>
double draw(FuzzedDataProvider& f, Dom d, bool allow_inf = true) {
    const int k = f.ConsumeIntegralInRange<int>(0, 23);
    const double u = f.ConsumeIntegral<std::uint16_t>() / 65535.0;  // [0, 1]
    const double inf = std::numeric_limits<double>::infinity();
    double v = 0;
    if (k < 14) {  // ordinary
        const double scale = k < 8 ? 1.0 : (k < 12 ? 8.0 : 60.0);
        switch (d) {
            case Dom::LogProb: v = -u * scale; break;
            case Dom::Real: v = (2 * u - 1) * scale; break;
            case Dom::Logit: v = (2 * u - 1) * scale * 2; break;
            case Dom::Positive: v = u * scale; break;
        }
        return v;
    }
    const bool neg = d == Dom::LogProb ? true : (d == Dom::Positive ? false : (u < 0.5));
    const double sgn = neg ? -1.0 : 1.0;
    switch (k) {
        case 14: v = 0.0; break;
        case 15: v = sgn * 1e30; break;
        case 16: v = sgn * huge<S>(); break;
        case 17: v = sgn * denorm<S>(); break;
        case 18: v = sgn * std::numeric_limits<S>::min(); break;
        case 19: v = allow_inf ? (d == Dom::Positive ? inf : -inf) : 0.0; break;
        case 20: v = allow_inf && d != Dom::LogProb ? sgn * inf : sgn * 1e-30; break;
        case 21: v = sgn * 1e-8; break;
        case 22: v = sgn * 700.0; break;
        default: v = std::round((2 * u - 1) * 3); break;  // small integers (ties)
    }
    return v;
}

/// A `[rows, cols]` matrix of draws; with `repeat` draws reused within a row (ties).
template <class S>
Mat<S> matrix(FuzzedDataProvider& f, Index rows, Index cols, Dom d, bool allow_inf = true) {
    Mat<S> x(rows, cols);
    const bool constant_rows = f.ConsumeIntegralInRange<int>(0, 7) == 0;
    for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < cols; ++j)
            x(i, j) = (constant_rows && j > 0) ? x(i, 0) : static_cast<S>(draw<S>(f, d, allow_inf));
    return x;
}

/// A token mask: 0/1, fractional weights, extremes (all ≥ 0 and finite: valid).
template <class S>
Mat<S> mask(FuzzedDataProvider& f, Index rows, Index cols) {
    Mat<S> m(rows, cols);
    const int style = f.ConsumeIntegralInRange<int>(0, 7);
    for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < cols; ++j) {
            const bool on = f.ConsumeBool();
            double v = on ? 1.0 : 0.0;
            if (style == 0) v = 1.0;                          // all on
            if (style == 1) v = 0.0;                          // empty
            if (style == 2) v = j <= i % (cols + 1) ? 1 : 0;  // right padding
            if (style >= 6 && on) {
                static const double w[] = {0.5, 2.0,  1e-30, 1e30, denorm<S>(),
                                           3.0, 1e-3, 0.25,  1e10, huge<S>()};
                v = w[f.ConsumeIntegralInRange<int>(0, 9)];
            }
            m(i, j) = static_cast<S>(v);
        }
    return m;
}

/// Put NaN (or garbage) at every masked position of `x` (masked entries are never read), and
/// with a small probability a NaN at one unmasked position (`read`: the entry point reads this
/// input, so the call must throw invalid_argument). Records unmasked non-finite values.
template <class S>
void poison_tokens(FuzzedDataProvider& f, Mat<S>& x, const Mat<S>& m, bool read, const char* name) {
    const int mode = f.ConsumeIntegralInRange<int>(0, 15);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double garbage = mode % 2 ? nan : -std::numeric_limits<double>::infinity();
    for (Index i = 0; i < x.rows(); ++i)
        for (Index j = 0; j < x.cols(); ++j) {
            if (m(i, j) == 0) {
                if (mode < 8) x(i, j) = static_cast<S>(garbage);
            }
        }
    if (mode == 15 && x.size() > 0) {
        const Index k = f.ConsumeIntegralInRange<Index>(0, x.size() - 1);
        const Index i = k / x.cols(), j = k % x.cols();
        x(i, j) = static_cast<S>(nan);
        if (m(i, j) != 0 && read) {
            flags().nan_unmasked = true;
            trace() << "poison: NaN in " << name << " at [" << i << ", " << j << "] (unmasked)\n";
        }
    }
    for (Index i = 0; i < x.rows(); ++i)
        for (Index j = 0; j < x.cols(); ++j)
            if (m(i, j) != 0 && !std::isfinite(static_cast<double>(x(i, j))))
                flags().nonfinite_unmasked = true;
}

/// The same for `[B·T, V]` logits rows: row n is masked when m(n / T, n % T) = 0.
template <class S>
void poison_rows(FuzzedDataProvider& f, Mat<S>& z, const Mat<S>& m, bool read, const char* name,
                 bool plus_inf_is_error = true) {
    const Index T = m.cols();
    const int mode = f.ConsumeIntegralInRange<int>(0, 15);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const auto on = [&](Index n) { return T > 0 && m(n / T, n % T) != 0; };
    for (Index n = 0; n < z.rows(); ++n)
        if (!on(n) && mode < 8)
            for (Index j = 0; j < z.cols(); ++j)
                z(n, j) = static_cast<S>(mode % 2 ? nan : std::numeric_limits<double>::infinity());
    if (mode == 15 && z.size() > 0) {
        const Index k = f.ConsumeIntegralInRange<Index>(0, z.size() - 1);
        const Index n = k / z.cols(), j = k % z.cols();
        z(n, j) = static_cast<S>(nan);
        if (on(n) && read) {
            flags().nan_unmasked = true;
            trace() << "poison: NaN in " << name << " at [" << n << ", " << j << "] (unmasked)\n";
        }
    }
    (void)plus_inf_is_error;
    for (Index n = 0; n < z.rows(); ++n)
        if (on(n))
            for (Index j = 0; j < z.cols(); ++j)
                if (!std::isfinite(static_cast<double>(z(n, j)))) flags().nonfinite_unmasked = true;
}

/// Record the non-finite entries of an input read everywhere (no mask).
template <class S>
void note_nonfinite(const Mat<S>& x) {
    for (Index i = 0; i < x.rows(); ++i)
        for (Index j = 0; j < x.cols(); ++j)
            if (!std::isfinite(static_cast<double>(x(i, j)))) flags().nonfinite_unmasked = true;
}

/// The case holds a documented-invalid input (named by `why`): the call must throw
/// rlpo::invalid_argument.
inline void require_throw(const std::string& why) {
    flags().nan_unmasked = true;
    flags().nonfinite_unmasked = true;
    trace() << "must throw: " << why << '\n';
}

/// True when `x` has a non-finite entry where `on(i, j)`.
template <class S, class On>
bool any_nonfinite(const Mat<S>& x, On on) {
    for (Index i = 0; i < x.rows(); ++i)
        for (Index j = 0; j < x.cols(); ++j)
            if (on(i, j) && !std::isfinite(static_cast<double>(x(i, j)))) return true;
    return false;
}

/// A value from a NameTable (one of its spellings).
template <class E>
const char* pick_name(FuzzedDataProvider& f, const rlpo::NameTable<E>& table) {
    return table[f.ConsumeIntegralInRange<std::size_t>(0, table.size() - 1)].name;
}

/// A hyperparameter from a list of (valid, extreme) candidates.
inline double pick(FuzzedDataProvider& f, std::initializer_list<double> xs) {
    const std::size_t k = f.ConsumeIntegralInRange<std::size_t>(0, xs.size() - 1);
    const double v = *(xs.begin() + k);
    return v;
}

// ------------------------------------------------------------------------------------------
// Gradient destinations
// ------------------------------------------------------------------------------------------

/// How the gradient is asked for: owned by the result, written into / added to a caller's
/// buffer (pre-filled), or not at all; with a coefficient.
template <class S>
struct Sink {
    rlpo::GradMode mode = rlpo::GradMode::Own;
    double coef = 1.0;
    Mat<S> buf;
    Mat<S> before;
    static constexpr double kFill = 0.5;

    void decode(FuzzedDataProvider& f, Index rows, Index cols) {
        mode = static_cast<rlpo::GradMode>(f.ConsumeIntegralInRange<int>(0, 3));
        coef = pick(f, {1.0, 1.0, -1.0, 0.001, -0.5, 1e3, 0.0, 1e-300});
        if (mode == rlpo::GradMode::Write || mode == rlpo::GradMode::Add) {
            buf = Mat<S>::Constant(rows, cols,
                                   static_cast<S>(mode == rlpo::GradMode::Write ? 7.0 : kFill));
            before = buf;
        }
        trace() << "sink: mode " << static_cast<int>(mode) << " coef " << coef << '\n';
    }
    rlpo::GradientOut<S> out() {
        switch (mode) {
            case rlpo::GradMode::Write: return rlpo::write_to<S>(buf, coef);
            case rlpo::GradMode::Add: return rlpo::add_to<S>(buf, coef);
            case rlpo::GradMode::None: return rlpo::no_grad<S>();
            default: {
                rlpo::GradientOut<S> o;
                o.coef = coef;
                return o;
            }
        }
    }
    /// The gradient the call produced (null when none was asked for).
    const Mat<S>* grad(const rlpo::Result<S>& r) const {
        if (mode == rlpo::GradMode::Own) return &r.grad;
        if (mode == rlpo::GradMode::None) return nullptr;
        return &buf;
    }
};

// ------------------------------------------------------------------------------------------
// The rule
// ------------------------------------------------------------------------------------------

inline void check_value(const char* fn, const char* what, double v) {
    if (!std::isfinite(v)) {
        std::ostringstream os;
        os.precision(17);
        os << fn << ": " << what << " is not finite (" << v << ")";
        fail(os.str());
    }
}

inline void check_metrics(const char* fn, const rlpo::Metrics& m) {
    for (const auto& e : m) {
        const double v = e.second.value();
        if (!std::isfinite(v) || !std::isfinite(e.second.sum) || !std::isfinite(e.second.count)) {
            std::ostringstream os;
            os.precision(17);
            os << fn << ": metric '" << e.first << "' is not finite (value " << v << ", sum "
               << e.second.sum << ", count " << e.second.count << ")";
            fail(os.str());
        }
    }
}

/// Every entry of `g` finite; `g` of shape [rows, cols] (when given).
template <class S>
void check_grad(const char* fn, const Mat<S>& g, Index rows, Index cols, const char* what) {
    if (g.rows() != rows || g.cols() != cols) {
        std::ostringstream os;
        os << fn << ": " << what << " has shape [" << g.rows() << ", " << g.cols()
           << "], expected [" << rows << ", " << cols << "]";
        fail(os.str());
    }
    for (Index i = 0; i < g.rows(); ++i)
        for (Index j = 0; j < g.cols(); ++j)
            if (!std::isfinite(static_cast<double>(g(i, j)))) {
                std::ostringstream os;
                os.precision(17);
                os << fn << ": " << what << "[" << i << ", " << j << "] is not finite ("
                   << static_cast<double>(g(i, j)) << ")";
                fail(os.str());
            }
}

/// Gradient entries at masked positions: exactly 0 (owned / overwritten) or untouched
/// (added into). `row_of(i, j)` says whether gradient entry (i, j) is masked.
template <class S, class Masked>
void check_masked(const char* fn, const Sink<S>& sink, const Mat<S>& g, Masked masked,
                  const char* what) {
    for (Index i = 0; i < g.rows(); ++i)
        for (Index j = 0; j < g.cols(); ++j) {
            if (!masked(i, j)) continue;
            const double v = static_cast<double>(g(i, j));
            const double want =
                sink.mode == rlpo::GradMode::Add ? static_cast<double>(sink.before(i, j)) : 0.0;
            if (v != want) {
                std::ostringstream os;
                os.precision(17);
                os << fn << ": " << what << "[" << i << ", " << j << "] = " << v
                   << " at a masked position, expected " << want;
                fail(os.str());
            }
        }
}

/// Run `call` (which performs its own checks on success) under the rule's exception policy.
template <class F>
void run(const char* fn, F&& call) {
    const Flags fl = flags();
    bool threw = false;
    std::string msg;
    try {
        call();
    } catch (const Skipped& s) {
        static std::vector<std::string> seen;
        const std::string key = std::string(s.hole) + " [" + fn + "]";
        if (std::find(seen.begin(), seen.end(), key) == seen.end()) {
            seen.push_back(key);
            std::fprintf(stderr, "fuzz: skipping known issue: %s\n", key.c_str());
        }
        return;
    } catch (const rlpo::invalid_argument& e) {
        threw = true;
        msg = e.what();
        // "<input>: NaN at [i, t] under a non-zero mask" names an input's NaN (not "inputs at
        // [i, t] give an undefined (NaN) loss", which finite extremes may produce)
        if (!fl.nonfinite_unmasked && (msg.find(": NaN at [") != std::string::npos ||
                                       msg.find("NaN under") != std::string::npos))
            fail(std::string(fn) + ": a NaN at a masked position was reported: " + msg);
    } catch (const rlpo::numerical_error& e) {
        threw = true;
        msg = e.what();
        if (fl.nan_unmasked)
            fail(
                std::string(fn) +
                ": a documented-invalid input gave numerical_error, documented invalid_argument: " +
                msg);
    } catch (const std::exception& e) {
        fail(std::string(fn) + ": unexpected exception type: " + e.what());
    }
    if (!threw && fl.nan_unmasked)
        fail(std::string(fn) +
             ": a documented-invalid input (see \"must throw\" / \"poison\") was accepted");
}

/// The standard checks of a `Result` with a token- or row-level gradient.
template <class S, class Masked>
void check_result(const char* fn, const rlpo::Result<S>& r, const Sink<S>& sink, Index rows,
                  Index cols, Masked masked) {
    check_value(fn, "value", r.value);
    check_metrics(fn, r.metrics);
    if (const Mat<S>* g = sink.grad(r)) {
        check_grad(fn, *g, rows, cols, "grad");
        check_masked(fn, sink, *g, masked, "grad");
    }
}

/// A Normalizer: a mode by one of its names, optional global counts (valid, extreme) and the
/// verl arithmetic flags.
inline rlpo::Normalizer normalizer(FuzzedDataProvider& f) {
    const char* name = pick_name(f, rlpo::detail::aggregation_table);
    rlpo::Normalizer n = f.ConsumeBool() ? rlpo::Normalizer::verl() : rlpo::Normalizer{};
    n.mode = rlpo::parse_aggregation(name);
    const auto count = [&]() -> std::optional<double> {
        const int k = f.ConsumeIntegralInRange<int>(0, 9);
        if (k < 5) return std::nullopt;
        static const double v[] = {1.0, 0.5, 1e-300, 1e300, 3.0};
        return v[k - 5];
    };
    n.num_tokens = count();
    n.num_seqs = count();
    n.norm_constant = count();
    if (f.ConsumeIntegralInRange<int>(0, 7) == 0) n.length_epsilon = pick(f, {0.0, 1e-8, 1e300});
    if (f.ConsumeIntegralInRange<int>(0, 7) == 0) n.count_epsilon = pick(f, {0.0, 1e-8, 1e300});
    trace() << "normalizer: " << name << " tokens " << n.num_tokens.value_or(-1) << " seqs "
            << n.num_seqs.value_or(-1) << " C " << n.norm_constant.value_or(-1) << " len_eps "
            << n.length_epsilon << " count_eps " << n.count_epsilon << " sum_norm_seq_mean "
            << n.sum_norm_seq_mean << '\n';
    return n;
}

/// Begin a case.
inline void begin_case() {
    reset_trace();
    flags() = Flags{};
}

}  // namespace fz
