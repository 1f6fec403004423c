#pragma once
// Shared checks every objective's test uses: finite differences through the testing kit,
// micro-batch splitting, and exception matching.
#include "catch.hpp"
#include "compare.hpp"

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/testing/gradcheck.hpp>

#include <string>
#include <vector>

namespace rlpo_test {

using rlpo::Index;
using rlpo::Mat;

/// Assert that `grad_of(x)` equals the central difference of `value_of` at x, entry by entry
/// (|fd − g| ≤ atol + rtol·|fd|), skipping entries flagged by `skip`.
template <class V>
void require_fd_gradient(V&& value_of, const Mat<double>& x, const Mat<double>& grad,
                         double rtol = 1e-6, double atol = 1e-9,
                         const std::function<bool(Index)>& skip = {}) {
    const auto rep = rlpo::testing::check_gradient(value_of, x, grad, {}, skip);
    INFO(rep.str());
    const Index bad =
        rlpo::testing::count_gradient_failures(value_of, x, grad, rtol, atol, {}, skip);
    REQUIRE(rep.checked > 0);
    REQUIRE(bad == 0);
}

/// Split row indices [0, B) into consecutive uneven chunks (sizes 1, 2, 3, …).
inline std::vector<std::pair<Index, Index>> uneven_chunks(Index B) {
    std::vector<std::pair<Index, Index>> out;
    Index start = 0, len = 1;
    while (start < B) {
        const Index n = std::min(len, B - start);
        out.emplace_back(start, n);
        start += n;
        ++len;
    }
    return out;
}

/// The global counts of a mask, as a trainer would all-reduce them before the micro-batches.
template <class M>
rlpo::Normalizer global_normalizer(rlpo::Aggregation mode, const M& mask) {
    rlpo::Normalizer n;
    n.mode = mode;
    double tok = 0, seq = 0;
    for (Index i = 0; i < mask.rows(); ++i) {
        double s = 0;
        for (Index t = 0; t < mask.cols(); ++t) s += static_cast<double>(mask(i, t));
        tok += s;
        seq += s > 0 ? 1 : 0;
    }
    n.num_tokens = tok;
    n.num_seqs = seq;
    return n;
}

inline const std::vector<rlpo::Aggregation>& all_modes() {
    static const std::vector<rlpo::Aggregation> m{
        rlpo::Aggregation::TokenMean, rlpo::Aggregation::TokenSum,
        rlpo::Aggregation::SeqMeanTokenSum, rlpo::Aggregation::SeqMeanTokenMean,
        rlpo::Aggregation::SeqMeanTokenSumNorm};
    return m;
}

}  // namespace rlpo_test

/// REQUIRE that `expr` throws rlpo::invalid_argument whose message contains `needle`.
#define RLPO_REQUIRE_THROWS_WITH_SUBSTR(expr, needle)                        \
    do {                                                                     \
        bool rlpo_thrown_ = false;                                           \
        try {                                                                \
            (void)(expr);                                                    \
        } catch (const rlpo::invalid_argument& e_) {                         \
            rlpo_thrown_ = true;                                             \
            INFO("message: " << e_.what());                                  \
            CHECK(std::string(e_.what()).find(needle) != std::string::npos); \
        }                                                                    \
        CHECK(rlpo_thrown_);                                                 \
    } while (false)

/// REQUIRE that `expr` throws rlpo::numerical_error whose message contains `needle`.
#define RLPO_REQUIRE_NUMERICAL_ERROR(expr, needle)                           \
    do {                                                                     \
        bool rlpo_thrown_ = false;                                           \
        try {                                                                \
            (void)(expr);                                                    \
        } catch (const rlpo::numerical_error& e_) {                          \
            rlpo_thrown_ = true;                                             \
            INFO("message: " << e_.what());                                  \
            CHECK(std::string(e_.what()).find(needle) != std::string::npos); \
        }                                                                    \
        CHECK(rlpo_thrown_);                                                 \
    } while (false)
