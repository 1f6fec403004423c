#pragma once
/// \file
/// Seeded random inputs for tests, including adversarial values.
///
/// Every generator draws from a `std::mt19937_64` seeded by the caller, so a failing case is
/// reproduced from its seed. Distributions are written out here (not std::*_distribution,
/// whose output differs between standard libraries), so the same seed gives the same data on
/// every platform.

#include <rlpo/core/types.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

namespace rlpo::testing {

class Generator {
public:
    explicit Generator(std::uint64_t seed) : rng_(seed) {}

    /// Uniform in [0, 1).
    double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    /// Standard normal (Box–Muller).
    double normal() {
        const double u1 = 1.0 - uniform(), u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
    /// Integer in [lo, hi].
    Index integer(Index lo, Index hi) {
        return lo + static_cast<Index>(rng_() % static_cast<std::uint64_t>(hi - lo + 1));
    }

    template <class S = double>
    Mat<S> normal(Index rows, Index cols, double scale = 1.0, double mean = 0.0) {
        Mat<S> m(rows, cols);
        for (Index k = 0; k < m.size(); ++k) m.data()[k] = static_cast<S>(mean + scale * normal());
        return m;
    }
    template <class S = double>
    Mat<S> uniform(Index rows, Index cols, double lo, double hi) {
        Mat<S> m(rows, cols);
        for (Index k = 0; k < m.size(); ++k) m.data()[k] = static_cast<S>(uniform(lo, hi));
        return m;
    }
    /// Token log-probabilities: log of a probability drawn uniformly in [p_min, 1).
    template <class S = double>
    Mat<S> logprobs(Index rows, Index cols, double p_min = 0.02) {
        Mat<S> m(rows, cols);
        for (Index k = 0; k < m.size(); ++k)
            m.data()[k] = static_cast<S>(std::log(uniform(p_min, 1.0)));
        return m;
    }
    /// `base` plus N(0, scale²) noise: old / reference log-probs near the current ones.
    template <class S = double>
    Mat<S> perturbed(const Mat<S>& base, double scale) {
        Mat<S> m = base;
        for (Index k = 0; k < m.size(); ++k)
            m.data()[k] = static_cast<S>(static_cast<double>(m.data()[k]) + scale * normal());
        return m;
    }
    /// A 0/1 response mask: each row keeps a prefix of random length in [min_len, cols]; with
    /// `empty_rows`, about one row in five is entirely masked (an empty response).
    template <class S = double>
    Mat<S> mask(Index rows, Index cols, Index min_len = 1, bool empty_rows = false) {
        Mat<S> m = Mat<S>::Zero(rows, cols);
        for (Index i = 0; i < rows; ++i) {
            if (empty_rows && uniform() < 0.2) continue;
            const Index len = integer(std::min(min_len, cols), cols);
            m.row(i).head(len).setOnes();
        }
        return m;
    }
    /// Logits `[N, V]`, N(0, scale²).
    template <class S = double>
    Mat<S> logits(Index rows, Index cols, double scale = 2.0) {
        return normal<S>(rows, cols, scale);
    }
    /// Adversarial logits: large magnitudes (±big), a fraction of −inf entries (never a whole
    /// row unless `allow_dead_rows`), and some rows nearly one-hot.
    template <class S = double>
    Mat<S> adversarial_logits(Index rows, Index cols, double big = 1e4,
                              double neg_inf_fraction = 0.2, bool allow_dead_rows = false) {
        Mat<S> m = normal<S>(rows, cols, 3.0);
        for (Index i = 0; i < rows; ++i) {
            const double kind = uniform();
            if (kind < 0.3)
                m.row(i) *= static_cast<S>(big / 3.0);  // huge spread
            else if (kind < 0.5)
                m.row(i).array() += static_cast<S>(big);  // huge offset
            else if (kind < 0.6)
                m(i, integer(0, cols - 1)) += static_cast<S>(big / 10);  // one-hot
            for (Index j = 0; j < cols; ++j)
                if (uniform() < neg_inf_fraction) m(i, j) = -std::numeric_limits<S>::infinity();
            if (!allow_dead_rows) {
                bool alive = false;
                for (Index j = 0; j < cols; ++j)
                    alive |= std::isfinite(static_cast<double>(m(i, j)));
                if (!alive) m(i, integer(0, cols - 1)) = S(0);
            }
        }
        return m;
    }

    std::mt19937_64& engine() { return rng_; }

private:
    std::mt19937_64 rng_;
};

}  // namespace rlpo::testing
