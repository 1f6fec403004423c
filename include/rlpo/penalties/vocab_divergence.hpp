#pragma once
/// \file
/// Full-vocabulary divergences between the policy and a reference policy, from their logits:
/// KL(π‖π_ref), forward KL(π_ref‖π), χ²(π‖π_ref), total variation and Jensen–Shannon.
///
/// Per token row n (N rows of V logits; p = softmax(z_n / τ) the policy, q = softmax(z_ref,n / τ)
/// the reference, τ the temperature):
///
/// | `VocabDivergence` | D_n                                   | ∂D_n/∂z_n (times 1/τ)                 | metric       |
/// |-------------------|---------------------------------------|----------------------------------------|--------------|
/// | `ReverseKL`       | Σ p (log p − log q)                   | p ⊙ (log p − log q − D)                | `kl`         |
/// | `ForwardKL`       | Σ q (log q − log p)                   | p − q                                  | `forward_kl` |
/// | `ChiSquared`      | Σ q (p/q − 1)² = Σ p²/q − 1            | 2 p ⊙ (p/q − Σ p²/q)                   | `chi2`       |
/// | `TotalVariation`  | ½ Σ abs(p − q)                        | ½ p ⊙ (s − Σ p s), s = sign(p − q)     | `tv`         |
/// | `JensenShannon`   | ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2  | p ⊙ (h − Σ p h), h = ½ log(p/m)        | `js`         |
///
/// The loss is Σ_n c_n·m_n·D_n: the rows are tokens, and the mask has the token layout `[B, T]`
/// with B·T = N (row n = i·T + t, row-major), so every aggregation mode of
/// core/aggregation.hpp applies as for a token-level loss (a `[N, 1]` mask treats each row as
/// its own sequence). The gradient is w.r.t. the **policy logits** `[N, V]`; the reference is a
/// constant. Metric: the mask-weighted mean of D_n over unmasked rows, named as in the table.
///
/// **Which one to use.** KL(π‖π_ref) is the exact (zero-variance) version of what the token
/// estimators k1/k3 estimate; ∇ of the forward KL is what k3 used as a loss follows (see
/// kl_estimators.hpp). RAPO (Deng et al. 2025, "Unlocking Reasoning Capabilities in LLMs via
/// Reinforcement Learning Exploration") penalises the forward KL to a *reward-reweighted*
/// reference: pass that reference's logits as `ref_logits` with `ForwardKL` (rlpo does not build
/// the reweighting itself; see docs/penalties.md). χ² is the action-level form of the ORPO
/// regulariser (occupancy_chi2.hpp has the occupancy-measure form).
///
/// **Conventions.** Entries of −inf logits are zero probabilities and contribute 0 (0·log 0 = 0).
/// Where the divergence is infinite (KL(π‖π_ref) or χ² with p > 0 = q; forward KL with
/// q > 0 = p) the value is +inf and the gradient undefined: the call throws, naming the row.
/// Total variation at p_j = q_j uses sign(0) = 0 (as `torch.abs`' gradient). Sums per row are
/// in double whatever the storage type; rows run in parallel (OpenMP), combined in row order.
///
/// **Bad input**: shapes (ref_logits ≠ logits, mask entries ≠ N) → rlpo::invalid_argument;
/// τ ≤ 0 → invalid_argument; NaN logits in an unmasked row → invalid_argument naming the input
/// and [row, column]; an unmasked row with no finite logit (no distribution) → invalid_argument.
/// An empty mask gives 0, gradient 0, metric 0.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace rlpo::penalties {

enum class VocabDivergence { ReverseKL, ForwardKL, ChiSquared, TotalVariation, JensenShannon };

/// Metric name of a divergence (`kl`, `forward_kl`, `chi2`, `tv`, `js`).
inline const char* to_string(VocabDivergence d) {
    switch (d) {
        case VocabDivergence::ReverseKL: return "kl";
        case VocabDivergence::ForwardKL: return "forward_kl";
        case VocabDivergence::ChiSquared: return "chi2";
        case VocabDivergence::TotalVariation: return "tv";
        case VocabDivergence::JensenShannon: return "js";
    }
    return "?";
}

struct VocabDivergenceOptions {
    VocabDivergence divergence = VocabDivergence::ReverseKL;
    /// τ: both logit rows are divided by τ before the softmax (> 0).
    double temperature = 1.0;
};

namespace detail {

/// D and ∂D/∂(z/τ) for one row; `g` receives the gradient (length V). Returns D; sets `err`
/// to 1 for an infinite divergence, 2 for a row without a distribution.
inline double vocab_row(VocabDivergence kind, const double* a, const double* b, Index V, double* lp,
                        double* lq, double* g, int& err) {
    const double ninf = -std::numeric_limits<double>::infinity();
    double ma = ninf, mb = ninf;
    for (Index j = 0; j < V; ++j) ma = std::max(ma, a[j]), mb = std::max(mb, b[j]);
    if (!(ma > ninf) || !(mb > ninf)) {
        err = 2;
        return 0.0;
    }
    double sa = 0.0, sb = 0.0;
    for (Index j = 0; j < V; ++j) sa += std::exp(a[j] - ma), sb += std::exp(b[j] - mb);
    const double la = ma + std::log(sa), lb = mb + std::log(sb);
    for (Index j = 0; j < V; ++j) lp[j] = a[j] - la, lq[j] = b[j] - lb;
    double D = 0.0, s = 0.0;
    switch (kind) {
        case VocabDivergence::ReverseKL:
            for (Index j = 0; j < V; ++j) {
                if (lp[j] == ninf) continue;
                if (lq[j] == ninf) {
                    err = 1;
                    return std::numeric_limits<double>::infinity();
                }
                D += std::exp(lp[j]) * (lp[j] - lq[j]);
            }
            for (Index j = 0; j < V; ++j)
                g[j] = lp[j] == ninf ? 0.0 : std::exp(lp[j]) * (lp[j] - lq[j] - D);
            break;
        case VocabDivergence::ForwardKL:
            for (Index j = 0; j < V; ++j) {
                if (lq[j] == ninf) continue;
                if (lp[j] == ninf) {
                    err = 1;
                    return std::numeric_limits<double>::infinity();
                }
                D += std::exp(lq[j]) * (lq[j] - lp[j]);
            }
            for (Index j = 0; j < V; ++j) g[j] = std::exp(lp[j]) - std::exp(lq[j]);
            break;
        case VocabDivergence::ChiSquared:
            for (Index j = 0; j < V; ++j) {
                if (lp[j] == ninf) continue;
                if (lq[j] == ninf) {
                    err = 1;
                    return std::numeric_limits<double>::infinity();
                }
                s += std::exp(lp[j]) * std::exp(lp[j] - lq[j]);  // Σ p·(p/q)
            }
            D = s - 1.0;
            for (Index j = 0; j < V; ++j)
                g[j] = lp[j] == ninf ? 0.0 : 2.0 * std::exp(lp[j]) * (std::exp(lp[j] - lq[j]) - s);
            break;
        case VocabDivergence::TotalVariation:
            for (Index j = 0; j < V; ++j) {
                const double d = std::exp(lp[j]) - std::exp(lq[j]);
                D += 0.5 * std::abs(d);
                const double sg = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
                g[j] = sg;
                s += std::exp(lp[j]) * sg;
            }
            for (Index j = 0; j < V; ++j) g[j] = 0.5 * std::exp(lp[j]) * (g[j] - s);
            break;
        case VocabDivergence::JensenShannon:
            for (Index j = 0; j < V; ++j) {
                if (lp[j] == ninf && lq[j] == ninf) {
                    g[j] = 0.0;
                    continue;
                }
                const double hi = std::max(lp[j], lq[j]), lo = std::min(lp[j], lq[j]);
                const double lm = hi + std::log1p(std::exp(lo - hi)) - std::log(2.0);  // log m
                const double p = std::exp(lp[j]), q = std::exp(lq[j]);
                if (p > 0) D += 0.5 * p * (lp[j] - lm);
                if (q > 0) D += 0.5 * q * (lq[j] - lm);
                g[j] = p > 0 ? 0.5 * (lp[j] - lm) : 0.0;  // h_j
                s += p * g[j];
            }
            for (Index j = 0; j < V; ++j) g[j] = std::exp(lp[j]) * (g[j] - s);
            break;
    }
    return D;
}

}  // namespace detail

/// Full-vocabulary divergence between the policy `logits` and `ref_logits` (both `[N, V]`),
/// aggregated over the token `mask` (B·T = N entries, row n = i·T + t). Gradient w.r.t.
/// `logits`.
template <class DZ, class DR, class DM>
Result<::rlpo::detail::scalar_t<DZ>> vocab_divergence(
    const Eigen::MatrixBase<DZ>& logits, const Eigen::MatrixBase<DR>& ref_logits,
    const Eigen::MatrixBase<DM>& mask, const VocabDivergenceOptions& opts = {},
    const Normalizer& norm = {}, const GradientOut<::rlpo::detail::scalar_t<DZ>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DZ>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "penalties::vocab_divergence";
    const ConstMatRef<S> z(logits.derived()), zr(ref_logits.derived());
    const ConstMatRef<::rlpo::detail::scalar_t<DM>> m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "ref_logits", zr, "logits", z);
    RLPO_CHECK(m.size() == z.rows(), fn, "mask: expected ", z.rows(),
               " entries (one per row of logits, token layout [B, T] with B·T = N), given [",
               m.rows(), ", ", m.cols(), "]");
    ::rlpo::detail::check_positive(fn, "temperature", opts.temperature);

    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, z.rows(), z.cols());
    const Index N = z.rows(), V = z.cols(), T = m.cols();
    const double inv_tau = 1.0 / opts.temperature;
    std::vector<double> row_value(static_cast<std::size_t>(N), 0.0), row_metric(row_value);
    std::vector<int> row_err(static_cast<std::size_t>(N), 0);
    ::rlpo::detail::parallel_region(N * V > 65536, [&](const ::rlpo::detail::Team& team) {
        std::vector<double> a(static_cast<std::size_t>(V)), b(a), lp(a), lq(a), gr(a);
        team.for_dynamic(N, 4, [&](Index n) {
            const Index i = n / T, t = n % T;
            const double mk = static_cast<double>(m(i, t));
            S* grow = g.row(n);
            if (mk == 0) {
                if (grow && g.mode() == GradMode::Write) std::fill(grow, grow + V, S(0));
                return;
            }
            bool nan = false;
            for (Index j = 0; j < V; ++j) {
                a[static_cast<std::size_t>(j)] = static_cast<double>(z(n, j)) * inv_tau;
                b[static_cast<std::size_t>(j)] = static_cast<double>(zr(n, j)) * inv_tau;
                nan = nan || std::isnan(a[static_cast<std::size_t>(j)]) ||
                      std::isnan(b[static_cast<std::size_t>(j)]);
            }
            const auto r = static_cast<std::size_t>(n);
            if (nan) {
                row_err[r] = 3;
                return;
            }
            int err = 0;
            const double D = detail::vocab_row(opts.divergence, a.data(), b.data(), V, lp.data(),
                                               lq.data(), gr.data(), err);
            if (err) {
                row_err[r] = err;
                return;
            }
            const double c = w.c[static_cast<std::size_t>(i)];
            row_value[r] = c * mk * D;
            row_metric[r] = mk * D;
            if (grow) {
                const double scale = g.coef() * c * mk * inv_tau;
                for (Index j = 0; j < V; ++j) {
                    const double v = scale * gr[static_cast<std::size_t>(j)];
                    if (g.mode() == GradMode::Add)
                        grow[j] += static_cast<S>(v);
                    else
                        grow[j] = static_cast<S>(v);
                }
            }
        });
    });
    double value = 0.0, metric = 0.0;
    for (Index n = 0; n < N; ++n) {
        const auto r = static_cast<std::size_t>(n);
        if (row_err[r] == 3) {
            for (Index j = 0; j < V; ++j) {
                if (std::isnan(static_cast<double>(z(n, j))))
                    ::rlpo::detail::fail(fn, "logits: NaN at [", n, ", ", j,
                                         "] in an unmasked row (NaN is rejected)");
                if (std::isnan(static_cast<double>(zr(n, j))))
                    ::rlpo::detail::fail(fn, "ref_logits: NaN at [", n, ", ", j,
                                         "] in an unmasked row (NaN is rejected)");
            }
        }
        if (row_err[r] == 2)
            ::rlpo::detail::fail(fn, "logits: row ", n,
                                 " has no finite entry in logits or ref_logits (no distribution)");
        if (row_err[r] == 1)
            ::rlpo::detail::fail(fn, to_string(opts.divergence), ": row ", n,
                                 " is infinite (one distribution has mass where the other has "
                                 "none); its gradient is undefined");
        value += row_value[r];
        metric += row_metric[r];
    }
    res.value = g.coef() * value;
    res.metrics.add(to_string(opts.divergence), metric, w.local_tokens);
    return res;
}

}  // namespace rlpo::penalties
