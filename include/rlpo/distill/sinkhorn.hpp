#pragma once
/// \file
/// SinKD — Sinkhorn distance between the student's and the teacher's batch of distributions
/// (Cui et al., "SinKD: Sinkhorn Distance Minimization for Knowledge Distillation", IEEE TNNLS
/// 2024, arXiv:2402.17110), with the gradient taken *through* the Sinkhorn iterations.
///
/// Over the n rows selected by the mask (a batch-level loss: rows interact), with student
/// P_i = softmax(z_i/τ) and teacher Q_j = softmax(y_j/τ):
///
///     W_ij = ‖P_i − Q_j‖₁,   K⁰ = exp(−W/ε),
///     for l = 1..L:  R^l = K^{l−1} / rowsum(K^{l−1}),   K^l = R^l / colsum(R^l),
///     loss = s · Σ_ij K^L_ij W_ij.
///
/// Defaults τ = 2, ε = 0.1, L = 20 row/column normalisations (the paper's), s = 1 (the loss
/// weight is the trainer's; SinKD scales the term by a hyper-parameter).
///
/// **Gradient** w.r.t. the student logits, exact for the unrolled iterations (the plan K^L is
/// differentiated, not treated as a constant): with G = ∂loss/∂K^L = s·W, each normalisation
/// is reversed as
///     column (K = R / c):  Ḡ_R,ij = (G_ij − Σ_i' G_i'j K_i'j) / c_j
///     row    (R = K'/ r):  Ḡ_K',ij = (Ḡ_R,ij − Σ_j' Ḡ_R,ij' R_ij') / r_i
/// then ∂loss/∂W = s·K^L − Ḡ_K⁰ ⊙ K⁰ / ε, ∂loss/∂P_iv = Σ_j ∂loss/∂W_ij · sign(P_iv − Q_jv)
/// (sign(0) = 0, as autograd's |·|), and the softmax VJP with 1/τ. The iterates are stored
/// (2L matrices n × n) and the plan is computed in double; the cost is O(n² V) per call,
/// meant for the batch sizes SinKD uses.
///
/// The mask selects rows (entries > 0; the weights are not used otherwise, and the
/// Normalizer does not apply: the loss is one batch value). GradientOut coefficient applies.
/// Metric: `sinkhorn` (Σ K^L ⊙ W, unscaled).
///
/// **Bad input**: shapes; V = 0 with rows ("logits: V = 0"; `[0, V]` is an empty batch);
/// τ < 1e−4 or not finite, ε ≤ 0, iterations < 1, s not finite; NaN / +inf / all −inf logit
/// rows (selected rows). K = exp(−W/ε) is formed with each row's least cost subtracted (the
/// loss is invariant to a row scale), so a small ε cannot underflow a row to 0/0; a column
/// that underflows everywhere still would, and the value is checked finite at the end
/// (rlpo::numerical_error).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <cmath>
#include <vector>

namespace rlpo::distill {

struct SinkhornOptions {
    double temperature = 2.0;  ///< τ
    double epsilon = 0.1;      ///< ε of K = exp(−W/ε)
    int iterations = 20;       ///< L row + column normalisations
    double scale = 1.0;        ///< s
};

/// SinKD loss over the rows selected by `mask` (`[B, T]`, B·T = N). Gradient w.r.t.
/// `student_logits`.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> sinkhorn(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const SinkhornOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    constexpr const char* fn = "distill::sinkhorn";
    const detail::LogitPair<DS, DT> in(fn, student_logits, teacher_logits);
    const ConstMatRef<S>&z = in.z, &y = in.y;
    detail::check_temperature(fn, opts.temperature);
    ::rlpo::detail::check_positive(fn, "epsilon", opts.epsilon);
    RLPO_CHECK(opts.iterations >= 1, fn, "iterations: must be >= 1, given ", opts.iterations);
    ::rlpo::detail::check_finite_param(fn, "scale", opts.scale);
    const Index N = z.rows(), V = z.cols();
    const detail::RowPlan plan = detail::plan_rows(fn, N, mask, Normalizer{});
    std::vector<Index> rows;
    for (Index n = 0; n < N; ++n)
        if (plan.m[static_cast<std::size_t>(n)] > 0) rows.push_back(n);
    const Index n = static_cast<Index>(rows.size());
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    if (g.active() && g.mode() == GradMode::Write)
        for (Index r = 0; r < N; ++r)
            for (Index j = 0; j < V; ++j) g.zero(r, j);
    if (n == 0) {
        res.metrics.set("sinkhorn", 0.0);
        return res;
    }
    const double invT = 1.0 / opts.temperature;
    // Softmax rows in double, with the row checks of divergences.hpp.
    MatD P(n, V), Q(n, V);
    for (Index a = 0; a < n; ++a) {
        const Index r = rows[static_cast<std::size_t>(a)];
        for (int which = 0; which < 2; ++which) {
            const ConstMatRef<S>& x = which == 0 ? z : y;
            Vec<double> xr = x.row(r).transpose().template cast<double>();
            detail::RowError err;
            const double mx = detail::check_row(
                xr.data(), V, which == 0 ? "student_logits" : "teacher_logits", err);
            if (err.set()) {
                if (err.col >= 0)
                    ::rlpo::detail::fail(fn, err.input, ": ", err.what, " at [", r, ", ", err.col,
                                         "]");
                ::rlpo::detail::fail(fn, err.input, ": ", err.what, " in row ", r);
            }
            auto dst = which == 0 ? P.row(a) : Q.row(a);
            for (Index j = 0; j < V; ++j)
                dst(j) = xr(j) == -std::numeric_limits<double>::infinity()
                             ? 0.0
                             : std::exp((xr(j) - mx) * invT);
            dst /= dst.sum();
        }
    }
    MatD W(n, n);
    for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < n; ++j) W(i, j) = (P.row(i) - Q.row(j)).cwiseAbs().sum();
    // K0 = exp(−(W − min_j W_ij)/ε): each row scaled by a constant, to which the loss is
    // invariant (the first step normalises the rows; the gradient through the scale is
    // Σ_j G_ij K0_ij = 0), so small ε cannot underflow a whole row to 0 (0/0).
    const Vec<double> wmin = W.rowwise().minCoeff();
    const MatD K0 = (-(W.colwise() - wmin) / opts.epsilon).array().exp().matrix();
    const int L = opts.iterations;
    std::vector<MatD> Rs(static_cast<std::size_t>(L)), Ks(static_cast<std::size_t>(L));
    std::vector<Vec<double>> rs(static_cast<std::size_t>(L)), cs(static_cast<std::size_t>(L));
    MatD K = K0;
    for (int l = 0; l < L; ++l) {
        const auto k = static_cast<std::size_t>(l);
        rs[k] = K.rowwise().sum();
        Rs[k] = (K.array().colwise() / rs[k].array()).matrix();
        cs[k] = Rs[k].colwise().sum().transpose();
        Ks[k] = (Rs[k].array().rowwise() / cs[k].transpose().array()).matrix();
        K = Ks[k];
    }
    const double dist = (K.array() * W.array()).sum();
    res.value = g.coef() * opts.scale * dist;
    res.metrics.set("sinkhorn", dist);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    if (!g.active()) return res;
    // Backward through the unrolled normalisations.
    MatD G = opts.scale * W;
    for (int l = L - 1; l >= 0; --l) {
        const auto k = static_cast<std::size_t>(l);
        const Vec<double> colterm = (G.array() * Ks[k].array()).colwise().sum().transpose();
        const MatD GR =
            ((G.rowwise() - colterm.transpose()).array().rowwise() / cs[k].transpose().array())
                .matrix();
        const Vec<double> rowterm = (GR.array() * Rs[k].array()).rowwise().sum();
        G = ((GR.colwise() - rowterm).array().colwise() / rs[k].array()).matrix();
    }
    const MatD GW = opts.scale * K - (G.array() * K0.array()).matrix() / opts.epsilon;
    // ∂/∂P_iv = Σ_j GW_ij sign(P_iv − Q_jv); then the softmax VJP.
    for (Index i = 0; i < n; ++i) {
        Vec<double> gp = Vec<double>::Zero(V);
        for (Index j = 0; j < n; ++j) {
            const double w = GW(i, j);
            if (w == 0) continue;
            for (Index v = 0; v < V; ++v) {
                const double d = P(i, v) - Q(j, v);
                gp(v) += d > 0 ? w : (d < 0 ? -w : 0.0);
            }
        }
        const double dot = P.row(i).dot(gp.transpose());
        const Index r = rows[static_cast<std::size_t>(i)];
        for (Index v = 0; v < V; ++v) g.put(r, v, invT * P(i, v) * (gp(v) - dot));
        // a huge scale or a tiny epsilon can overflow the backward pass (G·K0/ε) or S
        g.check_row_finite(fn, r, V, g.coef() * opts.scale);
    }
    return res;
}

}  // namespace rlpo::distill
