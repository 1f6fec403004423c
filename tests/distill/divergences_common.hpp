#pragma once
// Shared helpers of the tests of the dense distillation divergences (divergences_*.cpp):
// test cases with zero-probability columns, options, thread and fast-path settings, and a
// naive double reference row (the tolerances are support/compare.hpp's).
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/compare.hpp"
#include "support/invariance.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::DistillOptions;
using rlpo::distill::Divergence;
namespace rt = rlpo::testing;
using bf16 = Eigen::bfloat16;
constexpr double inf = std::numeric_limits<double>::infinity();

using rlpo_test::grad_err;
using rlpo_test::grad_tol;
using rlpo_test::value_tol;
using rlpo_test::with_threads;

#if defined(RLPO_USE_OPENMP)
// The row split (the threads share each row) forced in `o`; `shuffle`: its chunk ranges move
// every step by a fixed pattern (instead of after the sweep times).
inline DistillOptions force_row_split(DistillOptions o, bool shuffle) {
    o.tuning.split_bytes = 0;
    o.tuning.shuffle_ranges = shuffle;
    return o;
}
#endif

// JSD's lean value sweep set in `o` (`lean_bytes`: 0 always, SIZE_MAX never); `log_form`:
// every chunk of it takes the log form instead of the ratio form.
inline DistillOptions with_lean(DistillOptions o, std::size_t bytes, bool log_form = false) {
    o.tuning.lean_bytes = bytes;
    o.tuning.lean_log_form = log_form;
    return o;
}
// JSD's value sweeps in the tests: 0 the ordinary one, 1 the lean one (ratio form where
// safe), 2 the lean one in log form everywhere
inline constexpr int kLeanModes[] = {0, 1, 2};
inline DistillOptions lean_mode(DistillOptions o, int mode) {
    return with_lean(o, mode > 0 ? 0 : std::numeric_limits<std::size_t>::max(), mode == 2);
}

inline constexpr Divergence kAll[] = {Divergence::ForwardKL,     Divergence::ReverseKL,
                                      Divergence::JSD,           Divergence::SkewKL,
                                      Divergence::SkewReverseKL, Divergence::TVD};

struct Case {
    Mat<double> z, y, mask;  // student [N, V], teacher [N, V], row mask [B, T]
};

// B sequences of T rows over V entries. Zero-probability columns where the divergence is
// finite: a column −inf in both, a teacher-only −inf (not for reverse KL), a student-only −inf
// (not for forward KL). One masked row holds NaN garbage.
inline Case make_case(std::uint64_t seed, Divergence d, Index B = 3, Index T = 2, Index V = 7,
                      double scale = 2.0) {
    rt::Generator gen(seed);
    Case c;
    c.z = gen.logits(B * T, V, scale);
    c.y = gen.perturbed(c.z, 1.5);
    c.mask = gen.mask(B, T, 1, false);
    c.mask(0, 0) = 1;
    c.z(0, 1) = c.y(0, 1) = -inf;
    if (d != Divergence::ReverseKL) c.y(0, 2) = -inf;
    if (d != Divergence::ForwardKL) c.z(0, 3) = -inf;
    for (Index n = 0; n < B * T; ++n)
        if (c.mask(n / T, n % T) == 0) {
            c.z(n, 0) = std::numeric_limits<double>::quiet_NaN();
            c.y(n, 1) = std::numeric_limits<double>::quiet_NaN();
            break;
        }
    return c;
}

inline DistillOptions opts_for(Divergence d, double tau, bool tsq) {
    DistillOptions o = DistillOptions::make(d);
    o.temperature = tau;
    o.temperature_squared = tsq;
    o.beta = 0.3;
    o.alpha = 0.2;
    return o;
}

template <class S>
Mat<S> cast(const Mat<double>& x) {
    return x.template cast<S>();
}

// Naive double reference of one row (independent of the library's kernels): q, p by direct
// softmax (exp(−inf) = 0), the value from its definition and ∂L/∂z_j = q_j (g_j − Σ q g)/τ
// with g = ∂L/∂q.
inline double naive_row(Divergence d, const Eigen::RowVectorXd& z, const Eigen::RowVectorXd& y,
                        double tau, double beta, double alpha, Eigen::RowVectorXd& grad) {
    const Index V = z.size();
    auto softmax = [&](const Eigen::RowVectorXd& x) {
        const double m = x.maxCoeff();
        Eigen::RowVectorXd e(V);
        for (Index j = 0; j < V; ++j) e(j) = std::exp((x(j) - m) / tau);
        return Eigen::RowVectorXd(e / e.sum());
    };
    const Eigen::RowVectorXd q = softmax(z), p = softmax(y);
    auto xlogy = [](double a, double b) { return a == 0 ? 0.0 : a * std::log(a / b); };
    double L = 0;
    Eigen::RowVectorXd g(V);
    for (Index j = 0; j < V; ++j) {
        const double qj = q(j), pj = p(j);
        switch (d) {
            case Divergence::ForwardKL:
                L += xlogy(pj, qj);
                g(j) = qj > 0 ? -pj / qj : 0;
                break;
            case Divergence::ReverseKL:
                L += xlogy(qj, pj);
                g(j) = qj > 0 ? std::log(qj / pj) + 1 : 0;
                break;
            case Divergence::JSD: {
                const double mj = beta * pj + (1 - beta) * qj;
                L += beta * xlogy(pj, mj) + (1 - beta) * xlogy(qj, mj);
                g(j) = qj > 0 ? (1 - beta) * std::log(qj / mj) : 0;
                break;
            }
            case Divergence::SkewKL: {
                const double mj = alpha * pj + (1 - alpha) * qj;
                L += xlogy(pj, mj);
                g(j) = pj > 0 ? -(1 - alpha) * pj / mj : 0;
                break;
            }
            case Divergence::SkewReverseKL: {
                const double mj = (1 - alpha) * pj + alpha * qj;
                L += xlogy(qj, mj);
                g(j) = qj > 0 ? std::log(qj / mj) + 1 - alpha * qj / mj : 0;
                break;
            }
            case Divergence::TVD:
                L += 0.5 * std::abs(pj - qj);
                g(j) = 0.5 * (qj > pj ? 1.0 : (qj < pj ? -1.0 : 0.0));
                break;
            case Divergence::ChiSquared:  // Σ q²/p − 1 (+inf where p = 0 < q)
                L += qj > 0 ? qj * qj / pj : 0.0;
                g(j) = qj > 0 ? 2 * qj / pj : 0;
                break;
        }
    }
    if (d == Divergence::ChiSquared) L -= 1;
    const double sg = (q.array() * g.array()).sum();
    grad = (q.array() * (g.array() - sg) / tau).matrix();
    return L;
}
