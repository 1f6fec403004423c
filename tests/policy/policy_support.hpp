#pragma once
// Inputs and harness pieces shared by the policy tests (not a test file itself).
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"
#include "support/torch_reference.hpp"

#include <rlpo/core/aggregation.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace policy_test {

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
namespace rt = rlpo::testing;

struct Batch {
    Mat<double> logp, old, adv, mask, w;
};

/// Log-ratios spread over every region of the clipped surrogates: near 1, below 1 − ε, above
/// 1 + ε, large (beyond the ±20 clamp when `huge`), advantages of both signs and zero, a mask
/// with empty rows, and truncated-IS-like weights in [0.3, 2].
inline Batch spread_batch(std::uint64_t seed, Index B = 8, Index T = 16, double small = 0.15,
                          bool huge = true, bool row_constant_adv = false) {
    rt::Generator gen(seed);
    Batch b;
    b.logp = gen.logprobs(B, T);
    b.old = b.logp;
    for (Index k = 0; k < b.old.size(); ++k) {
        const double u = gen.uniform();
        double lr;
        if (u < 0.4)
            lr = gen.uniform(-small, small);
        else if (u < 0.6)
            lr = gen.uniform(-1.5, -0.3);
        else if (u < 0.8)
            lr = gen.uniform(0.3, 1.6);
        else if (u < 0.9 && huge)
            lr = gen.uniform(20.5, 25.0) * (gen.uniform() < 0.5 ? -1 : 1);
        else
            lr = gen.uniform(-3.0, 3.0);
        b.old.data()[k] = b.logp.data()[k] - lr;
    }
    b.adv = gen.normal(B, T);
    b.adv(0, 0) = 0.0;
    if (row_constant_adv)
        for (Index i = 0; i < B; ++i) b.adv.row(i).setConstant(b.adv(i, 0));
    b.mask = gen.mask(B, T, 1, true);
    b.mask(0, 0) = 1.0;
    b.w = gen.uniform(B, T, 0.3, 2.0);
    return b;
}

/// Record a Normalizer on a torch case.
inline void put_norm(rlpo_test::TorchReference::Case& c, const rlpo::Normalizer& n) {
    c.s("agg", rlpo::to_string(n.mode));
    if (n.num_tokens) c.p("num_tokens", *n.num_tokens);
    if (n.num_seqs) c.p("num_seqs", *n.num_seqs);
    if (n.norm_constant) c.p("norm_constant", *n.norm_constant);
    if (n.length_epsilon != 0) c.p("length_epsilon", n.length_epsilon);
    if (n.count_epsilon != 0) c.p("count_epsilon", n.count_epsilon);
    if (!n.sum_norm_seq_mean) c.s("sum_norm", "c_only");
}

/// A normalizer of `mode`, sometimes with external counts, sometimes with verl's arithmetic
/// (`Normalizer::verl`: the 1e-8 epsilons, seq-mean-token-sum-norm divided by C only).
inline rlpo::Normalizer norm_for(Aggregation mode, std::uint64_t k) {
    rlpo::Normalizer n = k % 3 == 1 ? rlpo::Normalizer::verl(mode) : rlpo::Normalizer{};
    n.mode = mode;
    if (mode == Aggregation::SeqMeanTokenSumNorm) n.norm_constant = 40.0;
    if (k % 3 == 0) {
        n.num_tokens = 1000.0;
        n.num_seqs = 50.0;
    }
    return n;
}

/// Micro-batch invariance (tests/support/invariance.hpp): `f(rows_begin, rows_count, norm)`
/// returns a Result.
using rlpo_test::require_micro_batch_invariance;

/// The differential test of a token surrogate `f(logp, old, adv, mask, opts, norm, out, w)`:
/// every option set × aggregation mode on `spread_batch` data (half the cases weighted, masked
/// NaN garbage), compared with the torch function `fn`; `params(case, opts)` records the
/// options; `metrics` are compared too. `effective_mode(opts, mode)` is the mode the surrogate
/// aggregates under (forced modes).
template <class S, class Opts, class F, class P, class M>
void torch_suite(const std::string& tag, const std::string& fn, std::uint64_t seed,
                 const std::vector<Opts>& option_sets, F&& f, P&& params,
                 const std::vector<std::string>& metrics, M&& effective_mode, double small = 0.15,
                 bool huge = true) {
    rlpo_test::TorchReference ref("policy", tag + (sizeof(S) == 4 ? "_f" : "_d"));
    struct Run {
        Mat<S> logp, old, adv, mask, w;
        Opts o;
        rlpo::Normalizer norm;
        bool weighted;
    };
    std::vector<Run> runs;
    for (const auto& o : option_sets)
        for (Aggregation mode : rlpo_test::all_modes()) {
            const Batch b = spread_batch(seed++, 8, 16, small, huge);
            Run r{b.logp.cast<S>(),     b.old.cast<S>(), b.adv.cast<S>(),
                  b.mask.cast<S>(),     b.w.cast<S>(),   o,
                  norm_for(mode, seed), seed % 2 == 0};
            r.mask(2, 3) = 0;
            r.logp(2, 3) = std::numeric_limits<S>::quiet_NaN();
            auto& c = ref.add<S>(fn);
            c.in("logp", r.logp).in("old_logp", r.old).in("advantages", r.adv).in("mask", r.mask);
            if (r.weighted) c.in("is_weights", r.w);
            params(c, o);
            rlpo::Normalizer eff = r.norm;
            eff.mode = effective_mode(o, mode);
            put_norm(c, eff);
            runs.push_back(std::move(r));
        }
    ref.run();
    const double tol = rlpo_test::ref_tol<S>();
    for (std::size_t k = 0; k < runs.size(); ++k) {
        const auto& r = runs[k];
        INFO("case " << k);
        std::optional<rlpo::ConstMatRef<S>> w;
        if (r.weighted) w.emplace(r.w);
        const auto res = f(r.logp, r.old, r.adv, r.mask, r.o, r.norm, rlpo::GradientOut<S>{}, w);
        CHECK(rlpo_test::rel_err(res.value, ref.scalar(k, "value")) < tol);
        CHECK(rlpo_test::max_rel_err(res.grad, ref.out(k, "grad")) < tol);
        for (const auto& name : metrics) {
            INFO(name);
            CHECK(rlpo_test::rel_err(res.metrics[name], ref.scalar(k, name), 1e-12) < tol);
        }
    }
}

inline Aggregation caller_mode(Aggregation m) { return m; }

}  // namespace policy_test
