#pragma once
// The invariances every objective's test checks, written once: thread counts and micro-batches.
//
//   with_threads(k, f)                  f() with k threads per rlpo call (rlpo::ThreadLimit),
//                                       or plain f() in a build without OpenMP.
//   require_micro_batch_invariance(f, mask, {...})
//                                       for every aggregation mode, with the mask's global
//                                       counts, uneven chunks of sequences (1, 2, 3, … rows)
//                                       add up to one call on the whole batch: values, gradient
//                                       rows and the named metrics (merged with Metrics::merge).
//   require_example_invariance(whole, B, part, {...})
//                                       the same for per-example objectives (preference
//                                       pairs, prompts): the parts' gradient columns ([2, B])
//                                       or rows ([B, ·]) fill the whole call's.
#include "catch.hpp"
#include "checks.hpp"
#include "compare.hpp"

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/threads.hpp>

#include <string>
#include <utility>
#include <vector>

namespace rlpo_test {

/// f() evaluated with at most k threads per rlpo call (`rlpo::ThreadLimit`, lifted on return,
/// also when f throws). Without OpenMP the library runs serially and this is f().
template <class F>
auto with_threads(int k, F&& f) -> decltype(f()) {
    const rlpo::ThreadLimit limit(k);
    return f();
}

/// What `require_micro_batch_invariance` compares.
struct Invariance {
    /// gradient rows per sequence (T for objectives over [B·T, V] logits, 1 for [B, T] inputs)
    Index grad_rows_per_seq = 1;
    /// relative tolerance of the value, gradient and metrics
    double tol = 1e-12;
    /// absolute floor of the value / metric comparison (values that cancel to ~0)
    double margin = 0.0;
    /// the gradient rows must be bitwise equal to the whole batch's (rows are never split)
    bool bitwise_grad = false;
    /// metrics (additive under Metrics::merge) that must agree too
    std::vector<std::string> metrics;
    /// the aggregation modes to run (empty: all of them)
    std::vector<rlpo::Aggregation> modes;
};

/// Micro-batch invariance: `f(first_seq, num_seqs, norm)` returns the Result of the objective on
/// sequences [first_seq, first_seq + num_seqs) under `norm`; for every aggregation mode, with
/// the global counts of `mask` ([B, T]), the values, the gradient rows and the metrics of the
/// uneven chunks add up to one call on the whole batch.
template <class F, class M>
void require_micro_batch_invariance(F&& f, const M& mask, const Invariance& opt = {}) {
    const std::vector<rlpo::Aggregation>& modes = opt.modes.empty() ? all_modes() : opt.modes;
    const Index B = mask.rows(), k = opt.grad_rows_per_seq;
    for (rlpo::Aggregation mode : modes) {
        INFO("aggregation " << rlpo::to_string(mode));
        const rlpo::Normalizer n = global_normalizer(mode, mask);
        const auto full = f(Index(0), B, n);
        using G = std::decay_t<decltype(full.grad)>;
        G g = G::Zero(full.grad.rows(), full.grad.cols());
        double total = 0.0;
        rlpo::Metrics merged;
        for (const auto& ch : uneven_chunks(B)) {
            INFO("sequences " << ch.first << " + " << ch.second);
            const auto part = f(ch.first, ch.second, n);
            REQUIRE(part.grad.rows() == ch.second * k);
            REQUIRE(part.grad.cols() == full.grad.cols());
            total += static_cast<double>(part.value);
            g.middleRows(ch.first * k, ch.second * k) = part.grad;
            merged.merge(part.metrics);
        }
        const double value = static_cast<double>(full.value);
        CHECK(std::abs(total - value) <= opt.margin + opt.tol * std::abs(value));
        if (opt.bitwise_grad)
            CHECK(g == full.grad);
        else
            CHECK(max_rel_err(g, full.grad) < opt.tol);
        for (const auto& name : opt.metrics) {
            INFO("metric " << name);
            const double want = full.metrics[name], got = merged[name];
            CHECK(std::abs(got - want) <= opt.margin + opt.tol * std::abs(want));
        }
    }
}

/// What `require_example_invariance` compares.
struct ExampleInvariance {
    /// relative tolerance of the value, gradient and metrics
    double tol = 1e-13;
    /// metrics (additive under Metrics::merge) that must agree too
    std::vector<std::string> metrics;
    /// the gradient holds one column per example ([2, B]: chosen, rejected); false: one row
    bool by_cols = true;
};

/// Micro-batch invariance of a per-example objective (one example = a preference pair or a
/// prompt): `part(first, n)` returns the Result on examples [first, first + n) with the
/// global counts set; over uneven chunks of the B examples the values add up to
/// `whole.value`, the gradient columns (or rows) fill `whole.grad`, and the named metrics
/// merge (Metrics::merge) to `whole`'s.
template <class R, class F>
void require_example_invariance(const R& whole, Index B, F&& part,
                                const ExampleInvariance& opt = {}) {
    using G = std::decay_t<decltype(whole.grad)>;
    G g = G::Zero(whole.grad.rows(), whole.grad.cols());
    double total = 0.0;
    rlpo::Metrics merged;
    for (const auto& ch : uneven_chunks(B)) {
        INFO("examples " << ch.first << " + " << ch.second);
        const auto p = part(ch.first, ch.second);
        total += static_cast<double>(p.value);
        if (opt.by_cols)
            g.middleCols(ch.first, ch.second) = p.grad;
        else
            g.middleRows(ch.first, ch.second) = p.grad;
        merged.merge(p.metrics);
    }
    const double value = static_cast<double>(whole.value);
    CHECK(std::abs(total - value) <= opt.tol * std::abs(value));
    CHECK(max_rel_err(g, whole.grad) < opt.tol);
    for (const auto& name : opt.metrics) {
        INFO("metric " << name);
        const double want = whole.metrics[name], got = merged[name];
        CHECK(std::abs(got - want) <= opt.tol * std::abs(want));
    }
}

}  // namespace rlpo_test
