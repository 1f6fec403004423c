#pragma once
/// \file
/// Distillation divergences between a teacher and a student over the vocabulary, one fused
/// kernel per divergence, with the gradient w.r.t. the student logits.
///
/// Per token row n of `[N, V]` logits, with temperature τ, student q = softmax(z/τ) and
/// teacher p = softmax(y/τ):
///
/// | `Divergence`      | L_n                                              | ∂L_n/∂z_j                          |
/// |-------------------|--------------------------------------------------|------------------------------------|
/// | `ForwardKL`       | KL(p‖q) = Σ p (log p − log q)                    | (q_j − p_j)/τ                      |
/// | `ReverseKL`       | KL(q‖p) = Σ q (log q − log p)                    | q_j (log q_j − log p_j − L)/τ      |
/// | `JSD` (β)         | β KL(p‖M) + (1−β) KL(q‖M), M = βp + (1−β)q       | (1−β) q_j (log(q_j/M_j) − KL(q‖M))/τ |
/// | `SkewKL` (α)      | KL(p‖αp + (1−α)q)                                | q_j (g_j − Σ q g)/τ, g = −(1−α)p/m |
/// | `SkewReverseKL`(α)| KL(q‖(1−α)p + αq)                                | q_j (g_j − Σ q g)/τ, g = log(q/m) + 1 − αq/m |
/// | `TVD`             | ½ Σ |p − q|                                      | q_j (g_j − Σ q g)/τ, g = ½ sign(q − p) |
///
/// (The JSD gradient uses ∂JSD/∂q_j = (1−β) log(q_j/M_j): the β-terms cancel.) The loss is
/// Σ_n c m_n L_n: rows are token rows of sequences given by a `[B, T]` row mask with B·T = N
/// (row n is sequence n / T, position n % T; m_n = 0 — padding or `ignore_index` — excludes
/// the row: never read, gradient exactly 0), aggregated by a `Normalizer` exactly as token
/// losses are (core/aggregation.hpp), so the five modes, the external (global) counts and
/// micro-batch invariance carry over. Callers with flat rows pass an `[N, 1]` mask (each row
/// its own sequence) or use the overload without a mask (all rows, token-mean).
/// `mask_from_labels(labels, ignore_index)` builds the mask from `[B, T]` labels.
///
/// **Conventions.** JSD follows TRL's `generalized_jsd_loss` / Liger's JSD: β = 0 is exactly
/// forward KL(p‖q) and β = 1 exactly reverse KL(q‖p) (special-cased, as there: the mixture
/// formula would give 0 at both ends); default β = 0.5. Skew KL / skew reverse KL are
/// DistiLLM's (Ko et al., ICML 2024), α = 0.1; DistiLLM's code evaluates the skew forward KL
/// as the cross-entropy −Σ p log m, which differs from KL(p‖m) by the teacher entropy (a
/// constant: same gradient); rlpo returns the divergence, so D(p, p) = 0. Temperature divides
/// both logit rows; `temperature_squared` multiplies value and gradient by τ² (Hinton et al.
/// 2015), off by default as in TRL GKD and Liger (`DistillOptions::hinton()` turns it on).
/// The gradient is w.r.t. the raw student logits z (the 1/τ is included).
///
/// **Speed.** Per row: one max pass over both rows (reads z and y from memory), one pass of
/// two exponentials (rows now in cache), the divergence-specific pass, and the pass that
/// writes the gradient; per-thread scratch of two V-rows, no `[N, V]` temporary beyond the
/// gradient the caller asked for (pass a `GradientOut` over a row block to stream rows in
/// chunks: rows are independent). Arithmetic in float (double for double logits) with
/// vectorised Eigen array code; bfloat16 logits are widened to float row by row and the
/// gradient is rounded back to bfloat16. Rows run in parallel (OpenMP); per-row values are
/// combined in row order, so results are identical for any thread count.
///
/// **Metrics**: the divergence's name (`forward_kl`, `reverse_kl`, `jsd`, `skew_kl`,
/// `skew_reverse_kl`, `tvd`) = mean of L_n (τ²-scaled when on) over unmasked rows,
/// mask-weighted.
///
/// **Bad input** (rlpo::invalid_argument): teacher shape ≠ student shape; mask not `[B, T]`
/// with B·T = N, or with negative / non-finite entries; τ ≤ 0; β or α outside [0, 1]; in a row
/// under a non-zero mask: a NaN or +inf logit (named with its position), a row of only −inf
/// (no distribution), or an infinite divergence (e.g. forward KL where the student logit is
/// −inf and the teacher has mass). −inf logits elsewhere are zero probabilities (exact 0).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <cmath>
#include <limits>
#include <string>

namespace rlpo::distill {

enum class Divergence { ForwardKL, ReverseKL, JSD, SkewKL, SkewReverseKL, TVD };

/// Metric / display name.
inline const char* to_string(Divergence d) {
    switch (d) {
        case Divergence::ForwardKL: return "forward_kl";
        case Divergence::ReverseKL: return "reverse_kl";
        case Divergence::JSD: return "jsd";
        case Divergence::SkewKL: return "skew_kl";
        case Divergence::SkewReverseKL: return "skew_reverse_kl";
        case Divergence::TVD: return "tvd";
    }
    return "?";
}

/// Parse `forward_kl`/`fkl`/`kl`, `reverse_kl`/`rkl`, `jsd`, `skew_kl`/`skl`,
/// `skew_reverse_kl`/`srkl`, `tvd`; unknown names throw with the valid list.
inline Divergence parse_divergence(const std::string& name) {
    struct Entry {
        const char* name;
        Divergence d;
    };
    static const Entry table[] = {
        {"forward_kl", Divergence::ForwardKL}, {"fkl", Divergence::ForwardKL},
        {"kl", Divergence::ForwardKL},         {"reverse_kl", Divergence::ReverseKL},
        {"rkl", Divergence::ReverseKL},        {"jsd", Divergence::JSD},
        {"skew_kl", Divergence::SkewKL},       {"skl", Divergence::SkewKL},
        {"skew_reverse_kl", Divergence::SkewReverseKL}, {"srkl", Divergence::SkewReverseKL},
        {"tvd", Divergence::TVD}};
    std::string valid;
    for (const auto& e : table) {
        if (name == e.name) return e.d;
        valid += valid.empty() ? "" : ", ";
        valid += e.name;
    }
    ::rlpo::detail::fail("distill::parse_divergence", "name: unknown divergence '", name,
                         "'; valid names: ", valid);
}

struct DistillOptions {
    Divergence divergence = Divergence::ForwardKL;
    double temperature = 1.0;          ///< τ > 0, divides both logit rows
    bool temperature_squared = false;  ///< multiply value and gradient by τ² (Hinton)
    double beta = 0.5;                 ///< JSD β ∈ [0, 1] (TRL/Liger convention)
    double alpha = 0.1;                ///< skew α ∈ [0, 1] (DistiLLM)

    static DistillOptions make(Divergence d) {
        DistillOptions o;
        o.divergence = d;
        return o;
    }
    /// Hinton et al. 2015: forward KL at temperature τ, scaled by τ².
    static DistillOptions hinton(double tau) {
        DistillOptions o;
        o.temperature = tau;
        o.temperature_squared = true;
        return o;
    }
    /// TRL GKDTrainer: generalized JSD with β = 0.5 and temperature 0.9, no τ² scaling.
    static DistillOptions trl_gkd(double beta = 0.5, double tau = 0.9) {
        DistillOptions o;
        o.divergence = Divergence::JSD;
        o.beta = beta;
        o.temperature = tau;
        return o;
    }
    /// Liger LigerFusedLinearJSD / LigerJSD: β = 0.5, τ = 1.
    static DistillOptions liger_jsd(double beta = 0.5) {
        DistillOptions o;
        o.divergence = Divergence::JSD;
        o.beta = beta;
        return o;
    }
    /// DistiLLM: skew KL (or skew reverse KL) with α = 0.1.
    static DistillOptions distillm(bool reverse = false, double alpha = 0.1) {
        DistillOptions o;
        o.divergence = reverse ? Divergence::SkewReverseKL : Divergence::SkewKL;
        o.alpha = alpha;
        return o;
    }
};

/// `[B, T]` row mask from `[B, T]` integer labels: 1 where label ≠ ignore_index, else 0.
template <class DL>
inline Mat<float> mask_from_labels(const Eigen::MatrixBase<DL>& labels,
                                   long long ignore_index = -100) {
    Mat<float> m(labels.rows(), labels.cols());
    for (Index i = 0; i < labels.rows(); ++i)
        for (Index t = 0; t < labels.cols(); ++t)
            m(i, t) = static_cast<long long>(labels.derived()(i, t)) == ignore_index ? 0.f : 1.f;
    return m;
}

namespace detail {

inline void validate(const char* fn, const DistillOptions& o) {
    ::rlpo::detail::check_positive(fn, "temperature", o.temperature);
    RLPO_CHECK(o.beta >= 0 && o.beta <= 1, fn, "beta: must be in [0, 1], given ", o.beta);
    RLPO_CHECK(o.alpha >= 0 && o.alpha <= 1, fn, "alpha: must be in [0, 1], given ", o.alpha);
}

/// One row of a dense divergence. z, y: the widened logit rows; returns L (without τ²).
template <class S, class A>
inline double dense_row(const DistillOptions& o, const A* z, const A* y, Index V, Scratch<A>& ws,
                        const RowGrad<S>& rg, RowError& err) {
    using std::log;
    const A invT = static_cast<A>(1.0 / o.temperature);
    const A mz = check_row(z, V, "student_logits", err);
    if (err.set()) return 0.0;
    const A my = check_row(y, V, "teacher_logits", err);
    if (err.set()) return 0.0;
    const CArrMap<A> za(z, V), ya(y, V);
    ArrMap<A> eq(ws.a.data(), V), ep(ws.b.data(), V);
    const double sq = static_cast<double>(exp_row(z, V, mz, invT, ws.a.data()));
    const double sp = static_cast<double>(exp_row(y, V, my, invT, ws.b.data()));
    const double lsq = std::log(sq), lsp = std::log(sp);
    // log q_j = (z_j − mz)/τ − log sq;  log p_j = (y_j − my)/τ − log sp
    const A cq = static_cast<A>(-static_cast<double>(mz) * invT - lsq);
    const A cp = static_cast<A>(-static_cast<double>(my) * invT - lsp);
    const A iq = static_cast<A>(1.0 / sq), ip = static_cast<A>(1.0 / sp);
    const A zero(0);
    Divergence d = o.divergence;
    if (d == Divergence::JSD && o.beta == 0.0) d = Divergence::ForwardKL;
    if (d == Divergence::JSD && o.beta == 1.0) d = Divergence::ReverseKL;
    switch (d) {
        case Divergence::ForwardKL: {
            // L = Σ p (y − z)/τ + (cp − cq)
            const double a =
                (ep > zero).select(ep * (ya - za), zero).template cast<double>().sum();
            const double L = a * ip * invT + static_cast<double>(cp) - static_cast<double>(cq);
            rg.set((eq * iq - ep * ip) * invT);
            return L;
        }
        case Divergence::ReverseKL: {
            const double b =
                (eq > zero).select(eq * (za - ya), zero).template cast<double>().sum();
            const double L = b * iq * invT + static_cast<double>(cq) - static_cast<double>(cp);
            if (!std::isfinite(L)) return L;
            const A k = static_cast<A>(static_cast<double>(cq) - static_cast<double>(cp) - L);
            rg.set((eq > zero).select(eq * iq * ((za - ya) * invT + k), zero) * invT);
            return L;
        }
        case Divergence::JSD: {
            const A beta = static_cast<A>(o.beta), omb = static_cast<A>(1.0 - o.beta);
            // q, p normalised in place; KL(p‖M) summed, then ep ← log(q/M) (0 where q = 0)
            eq *= iq;
            ep *= ip;
            const double klp =
                (ep > zero)
                    .select(ep * ((ya * invT + cp) - (beta * ep + omb * eq).log()), zero)
                    .template cast<double>()
                    .sum();
            ep = (eq > zero).select((za * invT + cq) - (beta * ep + omb * eq).log(), zero);
            const double klq = (eq * ep).template cast<double>().sum();
            const double L = o.beta * klp + (1.0 - o.beta) * klq;
            const A kq = static_cast<A>(klq);
            rg.set(omb * eq * (ep - kq) * invT);
            return L;
        }
        case Divergence::SkewKL: {
            const A al = static_cast<A>(o.alpha), oma = static_cast<A>(1.0 - o.alpha);
            eq *= iq;
            ep *= ip;
            // L = Σ p (log p − log m), m = αp + (1−α)q;  g = −(1−α) p/m
            const double L =
                (ep > zero)
                    .select(ep * ((ya * invT + cp) - (al * ep + oma * eq).log()), zero)
                    .template cast<double>()
                    .sum();
            ep = (ep > zero).select(-oma * ep / (al * ep + oma * eq), zero);
            const A sg = (eq * ep).sum();
            rg.set(eq * (ep - sg) * invT);
            return L;
        }
        case Divergence::SkewReverseKL: {
            const A al = static_cast<A>(o.alpha), oma = static_cast<A>(1.0 - o.alpha);
            eq *= iq;
            ep *= ip;
            // m = (1−α)p + αq;  L = Σ q (log q − log m);  ∂L/∂q = log(q/m) + 1 − αq/m
            ep = (eq > zero).select((za * invT + cq) - (oma * ep + al * eq).log(), zero);
            // ep now holds log(q/m); L = Σ q log(q/m)
            const double L = (eq * ep).template cast<double>().sum();
            // g − 1 = log(q/m) − α q/m, with q/m = exp(log(q/m))
            ep = (eq > zero).select(ep - al * ep.exp(), zero);
            const A sg = (eq * ep).sum();
            rg.set(eq * (ep - sg) * invT);
            return L;
        }
        case Divergence::TVD: {
            eq *= iq;
            ep *= ip;
            const double L = 0.5 * (ep - eq).abs().template cast<double>().sum();
            const A half(0.5);
            ep = half * (eq - ep).sign();
            const A sg = (eq * ep).sum();
            rg.set(eq * (ep - sg) * invT);
            return L;
        }
    }
    return 0.0;
}

}  // namespace detail

/// Divergence between teacher and student logits (`[N, V]`, same shape and type: float,
/// double or Eigen::bfloat16), rows selected and aggregated by the `[B, T]` row `mask`
/// (B·T = N) under `norm`. Gradient w.r.t. `student_logits`.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const DistillOptions& opts = {},
    const Normalizer& norm = {}, const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    static_assert(detail::is_logit_scalar_v<S>,
                  "rlpo::distill: logits must be float, double or Eigen::bfloat16");
    static_assert(std::is_same<S, ::rlpo::detail::scalar_t<DT>>::value,
                  "rlpo::distill: student and teacher logits must have the same scalar type");
    using A = detail::acc_t<S>;
    constexpr const char* fn = "distill::divergence";
    const ConstMatRef<S> z(student_logits.derived()), y(teacher_logits.derived());
    ::rlpo::detail::check_same_shape(fn, "teacher_logits", y, "student_logits", z);
    detail::validate(fn, opts);
    const Index N = z.rows(), V = z.cols();
    const detail::RowPlan plan = detail::plan_rows(fn, N, mask, norm);
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    const double t2 = opts.temperature_squared ? opts.temperature * opts.temperature : 1.0;
    const auto pass = detail::drive_rows<S, A>(
        fn, plan, N, V, g, t2,
        [&](Index n, detail::Scratch<A>& ws, const detail::RowGrad<S>& rg,
            detail::RowError& err, double&) -> double {
            const A* zr = detail::widen<A, S>(z, n, ws.z);
            const A* yr = detail::widen<A, S>(y, n, ws.y);
            return detail::dense_row<S, A>(opts, zr, yr, V, ws, rg, err);
        });
    res.value = g.coef() * pass.value;
    res.metrics.add(to_string(opts.divergence), pass.metric, pass.count);
    return res;
}

/// All rows, token-mean (no mask).
template <class DS, class DT>
Result<::rlpo::detail::scalar_t<DS>> divergence(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const DistillOptions& opts = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    const Mat<float> ones = Mat<float>::Ones(student_logits.rows(), 1);
    return divergence(student_logits, teacher_logits, ones, opts, Normalizer{}, out);
}

#define RLPO_DISTILL_NAMED(NAME, KIND)                                                         \
    template <class DS, class DT, class DM>                                                    \
    Result<::rlpo::detail::scalar_t<DS>> NAME(                                                 \
        const Eigen::MatrixBase<DS>& student_logits,                                           \
        const Eigen::MatrixBase<DT>& teacher_logits, const Eigen::MatrixBase<DM>& mask,        \
        DistillOptions opts = {}, const Normalizer& norm = {},                                 \
        const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {                           \
        opts.divergence = KIND;                                                                \
        return divergence(student_logits, teacher_logits, mask, opts, norm, out);              \
    }

/// Named shorthands: `forward_kl(z, y, mask, opts, norm, out)` = divergence with that kind.
RLPO_DISTILL_NAMED(forward_kl, Divergence::ForwardKL)
RLPO_DISTILL_NAMED(reverse_kl, Divergence::ReverseKL)
RLPO_DISTILL_NAMED(jsd, Divergence::JSD)
RLPO_DISTILL_NAMED(skew_kl, Divergence::SkewKL)
RLPO_DISTILL_NAMED(skew_reverse_kl, Divergence::SkewReverseKL)
RLPO_DISTILL_NAMED(tvd, Divergence::TVD)
#undef RLPO_DISTILL_NAMED

}  // namespace rlpo::distill
