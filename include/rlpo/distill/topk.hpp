#pragma once
/// \file
/// Forward KL to a teacher known only by its top-k (offline distillation stores (index,
/// log-prob) pairs), and the DAC-KL idea: forward KL restricted to the teacher's top-p region.
///
/// Per token row n: student q = softmax(z/τ) over the full vocabulary; teacher given as k
/// distinct indices K and log-probabilities ℓ_k (the teacher's log-probs at the distillation
/// temperature, as stored: τ divides the student logits only), P_K = Σ_k e^{ℓ_k} ≤ 1. What
/// happens to the teacher's tail mass 1 − P_K is the `TopKTail` rule:
///
/// * `Bucket` (default): the tail is one more category. p_t = 1 − P_K, q_t = Σ_{j∉K} q_j, and
///   L = Σ_K p_k (ℓ_k − log q_k) + p_t (log p_t − log q_t). This is the exact KL between the
///   (k+1)-category coarsenings of p and q, hence a lower bound of the full KL(p‖q) (data
///   processing) that equals it when the teacher's mass is all in K. ∂L/∂z_j = (q_j − p_j)/τ
///   for j ∈ K and q_j (1 − p_t/q_t)/τ for j ∉ K. q_t is summed over the tail directly (no
///   1 − Q_K cancellation); a tail far below the row's maximum (q_t near the type's smallest
///   normal number, e.g. τ = 1e−3 with a 1.8 logit gap) is taken in log space relative to
///   its own maximum, so L stays finite and exact and the gradient bounded.
/// * `Renormalize`: the teacher is renormalised on K, p̃_k = e^{ℓ_k}/P_K, and
///   L = Σ_K p̃_k (log p̃_k − log q_k) (the student is not renormalised); ∂L/∂z_j = (q_j −
///   p̃_j [j∈K])/τ. This is the rule of sparse / top-k logit distillation recipes that keep only
///   the stored entries.
///
/// `dac_kl` builds K per row as the teacher's top-p region — the smallest set of highest
/// teacher probabilities (softmax(y/τ)) whose mass reaches `top_p` — and applies `Renormalize`:
/// forward KL to the teacher restricted to its high-density region and renormalised there. It
/// implements the *idea* of DAC-KL (distillation with a dynamically clipped teacher
/// distribution); the paper's learned clipping network that predicts the region is out of
/// scope: the region here is the fixed top-p rule, a documented simplification.
///
/// Rows, masks, aggregation, temperature, τ² option, GradientOut, OpenMP and the bfloat16
/// student logits work as in divergences.hpp. Metrics: `forward_kl` (mean L over unmasked
/// rows) and `teacher_topk_mass` (mean P_K; for `dac_kl` the mean region mass) and for
/// `dac_kl` also `dac_region_size` (mean |K|).
///
/// **Bad input** (rlpo::invalid_argument): indices / log-probs not `[N, k]`; an index outside
/// [0, V) or repeated in a row; a NaN or +inf teacher log-prob, or one above
/// `kTopKLogprobSlack` = 1e−4 (log-probs are ≤ 0; values in (0, 1e−4] are taken as rounding
/// and used as given); P_K > 1 (beyond 1e-4, Bucket;
/// a tail mass ≤ 1e-4 is taken as rounding, i.e. 0, when K covers the student's support);
/// every ℓ_k −inf (Renormalize: no distribution); top_p outside (0, 1]; τ < 1e−4 or not
/// finite (`kMinTemperature`); student logits `[N, 0]` with N > 0 ("logits: V = 0"; `[0, V]`
/// is an empty batch); and per row the
/// student errors of divergences.hpp (NaN, +inf, all −inf, infinite divergence: the student
/// puts zero probability where the teacher has mass). The value and metrics are checked
/// finite at the end (rlpo::numerical_error otherwise).
///
/// **Allocates** (per call): `forward_kl_topk` the validated (index, log-prob) pairs of all
/// rows (2·N·k entries) and one k-vector for the duplicate check; both: per thread, the
/// scratch rows of rows.hpp (two V-rows of the arithmetic type, plus V-row copies for
/// bfloat16 logits); `dac_kl` per thread also the teacher's order (V indices) and its top-p
/// region (indices and log-probs, grown to the largest region of the thread's rows), and
/// N doubles of region sizes; the per-row results (N values, N errors); the gradient when
/// owned. No allocation per row: the region is found by selection (`std::nth_element` on the
/// thread's buffer over a growing prefix, then a sort of that prefix only), not a full sort.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

namespace rlpo::distill {

enum class TopKTail { Bucket, Renormalize };

struct TopKOptions {
    TopKTail tail = TopKTail::Bucket;
    double temperature = 1.0;          ///< τ > 0 divides the student logits
    bool temperature_squared = false;  ///< multiply value and gradient by τ²
};

struct DacKLOptions {
    double top_p = 0.9;                ///< mass of the teacher's high-density region, (0, 1]
    double temperature = 1.0;          ///< τ > 0 divides both logit rows
    bool temperature_squared = false;  ///< multiply value and gradient by τ²
};

/// How far above 0 a stored teacher log-prob may lie (rounding of log 1): larger values are
/// rejected, since e^ℓ > 1 is no probability (at ℓ = 800 the top-k mass would be inf).
inline constexpr double kTopKLogprobSlack = 1e-4;

namespace detail {

/// q = softmax(z/τ) into ws.a (exact zeros at −inf); returns log Σ exp((z − mz)/τ) and the
/// row maximum in `mz` (log q_j = (z_j − mz)/τ − the returned value: no rounding relative to
/// large logits), or NaN/+inf/−inf flags through `err`.
template <class A>
inline double student_softmax(const A* z, Index V, A invT, Scratch<A>& ws, RowError& err,
                              double& mzo) {
    const A mz = check_row(z, V, "student_logits", err);
    if (err.set()) return 0.0;
    mzo = static_cast<double>(mz);
    double s = 0.0;
    if (has_neg_inf(z, V))
        s = static_cast<double>(exp_row<true>(z, V, mz, invT, ws.a.data()));
    else
        s = static_cast<double>(exp_row<false>(z, V, mz, invT, ws.a.data()));
    ArrMap<A>(ws.a.data(), V) *= static_cast<A>(1.0 / s);
    return std::log(s);
}

/// One row of top-k forward KL. idx/lp: the k (index, teacher log-prob) pairs (validated).
template <class S, class A>
inline double topk_row(TopKTail tail, const A* z, Index V, const Index* idx, const double* lp,
                       std::size_t k, double invT, Scratch<A>& ws, const GradRow<S>& rg,
                       RowError& err, double& mass) {
    double mz = 0.0;
    const double ls = student_softmax(z, V, static_cast<A>(invT), ws, err, mz);
    if (err.set()) return 0.0;
    double PK = 0.0, lmax = -std::numeric_limits<double>::infinity();
    for (std::size_t t = 0; t < k; ++t) lmax = std::max(lmax, lp[t]);
    for (std::size_t t = 0; t < k; ++t) PK += std::exp(lp[t]);
    mass = PK;
    A* q = ws.a.data();
    const auto logq = [&](Index j) { return (static_cast<double>(z[j]) - mz) * invT - ls; };
    if (tail == TopKTail::Renormalize) {
        if (lmax == -std::numeric_limits<double>::infinity()) {
            err = {"teacher_logprobs", "every log-prob is -inf (no distribution)", -1};
            return 0.0;
        }
        double s = 0.0;
        for (std::size_t t = 0; t < k; ++t) s += std::exp(lp[t] - lmax);
        const double lnorm = lmax + std::log(s);
        double L = 0.0;
        for (std::size_t t = 0; t < k; ++t) {
            const double lpt = lp[t] - lnorm;
            if (lpt == -std::numeric_limits<double>::infinity()) continue;
            L += std::exp(lpt) * (lpt - logq(idx[t]));
        }
        if (!std::isfinite(L)) return L;
        rg.set(ArrMap<A>(q, V) * static_cast<A>(invT));
        for (std::size_t t = 0; t < k; ++t) rg.add_at(idx[t], -std::exp(lp[t] - lnorm) * invT);
        return L;
    }
    // Bucket
    if (PK > 1.0 + 1e-4) {
        err = {"teacher_logprobs", "the top-k probabilities sum to more than 1", -1};
        return 0.0;
    }
    double pt = std::max(0.0, 1.0 - PK);
    std::vector<A>& saved = ws.saved;
    saved.resize(k);
    for (std::size_t t = 0; t < k; ++t) {
        saved[t] = q[idx[t]];
        q[idx[t]] = A(0);
    }
    // q stays 0 on K from here: the gradient of K's entries is written as (q_k − p_k)/τ on
    // top of a 0, never as a large tail term cancelled by a correction (which a row weight
    // of 1e300 would turn into inf − inf)
    double qt = sum_chunks(ArrMap<A>(q, V));
    // q_t from the normalised row is exact while it stays far above the smallest normal
    // number (the entries lost to underflow, or raised to ~1e-38 by the vectorised exp's
    // clamp, weigh < 1 ulp): at least V·min/ε. Below, the tail is far under the row's
    // maximum ((z_j − mz)/τ ≲ −87 in float): log q_t is taken relative to the tail's own
    // maximum z_t, log q_t = (z_t − mz)/τ − ls + log Σ_{j∉K} e^{(z_j − z_t)/τ}, and the tail
    // softmax e_j/Σe carries the gradient — the value stays finite and exact and no factor
    // p_t/q_t overflows (the student has mass e^{−1800} there, not 0).
    constexpr double tiny = static_cast<double>(std::numeric_limits<A>::min()) /
                            static_cast<double>(std::numeric_limits<A>::epsilon());
    bool far_tail = pt > 0 && qt < static_cast<double>(V) * tiny;
    double log_qt = std::log(qt), st = 0.0;
    A* e = ws.b.data();
    if (far_tail) {
        for (Index j = 0; j < V; ++j) e[j] = z[j];
        for (std::size_t t = 0; t < k; ++t) e[idx[t]] = -std::numeric_limits<A>::infinity();
        const A zt = CArrMap<A>(e, V).maxCoeff();
        if (zt == -std::numeric_limits<A>::infinity()) {
            qt = 0.0;  // K holds every finite logit: the tail has no mass at all
            log_qt = -std::numeric_limits<double>::infinity();
            far_tail = false;
        } else {
            st = static_cast<double>(exp_row<true>(e, V, zt, static_cast<A>(invT), e));
            log_qt = (static_cast<double>(zt) - mz) * invT - ls + std::log(st);
        }
    }
    // K covers the student's whole support: a tail mass within the rounding tolerance is 0
    if (qt == 0 && pt <= 1e-4) pt = 0;
    double L = 0.0;
    for (std::size_t t = 0; t < k; ++t) {
        if (lp[t] == -std::numeric_limits<double>::infinity()) continue;
        L += std::exp(lp[t]) * (lp[t] - logq(idx[t]));
    }
    if (pt > 0) L += pt * (std::log(pt) - log_qt);
    if (!std::isfinite(L)) return L;
    if (far_tail) {  // q_j/τ − p_t·(e_j/Σe)/τ off K (q and e are 0 on K)
        rg.set(ArrMap<A>(q, V) * static_cast<A>(invT) -
               ArrMap<A>(e, V) * static_cast<A>(pt * invT / st));
    } else {  // q_j·(1 − p_t/q_t)/τ off K
        const double r = pt > 0 ? pt / qt : 0.0;
        rg.set(ArrMap<A>(q, V) * static_cast<A>((1.0 - r) * invT));
    }
    for (std::size_t t = 0; t < k; ++t)
        rg.add_at(idx[t], (static_cast<double>(saved[t]) - std::exp(lp[t])) * invT);
    return L;
}

/// Check the options; returns the loss scale (`temperature_scale`).
inline double validate(const char* fn, const TopKOptions& o) {
    detail::check_temperature(fn, o.temperature);
    return temperature_scale(fn, o.temperature, o.temperature_squared);
}
inline double validate(const char* fn, const DacKLOptions& o) {
    detail::check_temperature(fn, o.temperature);
    RLPO_CHECK(o.top_p > 0 && o.top_p <= 1, fn, "top_p: must be in (0, 1], given ", o.top_p);
    return temperature_scale(fn, o.temperature, o.temperature_squared);
}

}  // namespace detail

/// Forward KL to a top-k teacher. `student_logits` `[N, V]` (float, double, bfloat16);
/// `teacher_indices` `[N, k]` (any integer or floating type holding integers);
/// `teacher_logprobs` `[N, k]`; `mask` `[B, T]` with B·T = N. Gradient w.r.t. the student
/// logits.
template <class DS, class DI, class DL, class DM>
Result<::rlpo::detail::scalar_t<DS>> forward_kl_topk(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DI>& teacher_indices,
    const Eigen::MatrixBase<DL>& teacher_logprobs, const Eigen::MatrixBase<DM>& mask,
    const TopKOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    static_assert(detail::is_logit_scalar_v<S>,
                  "rlpo::distill: logits must be float, double or Eigen::bfloat16");
    using A = detail::acc_t<S>;
    constexpr const char* fn = "distill::forward_kl_topk";
    const ConstMatRef<S> z(student_logits.derived());
    const auto& ti = teacher_indices.derived();
    const auto& tl = teacher_logprobs.derived();
    const Index N = z.rows(), V = z.cols(), K = ti.cols();
    detail::check_vocabulary(fn, "student_logits", N, V);
    RLPO_CHECK(ti.rows() == N, fn, "teacher_indices: expected ", N,
               " rows (rows of student_logits), given ", ti.rows());
    ::rlpo::detail::check_same_shape(fn, "teacher_logprobs", tl, "teacher_indices", ti);
    const double t2 = detail::validate(fn, opts);
    const detail::RowPlan plan = detail::plan_rows(fn, N, mask, norm);
    // Validate the teacher's pairs of unmasked rows up front (serial, O(N k log k)).
    std::vector<Index> idx_all(static_cast<std::size_t>(N * K));
    std::vector<double> lp_all(static_cast<std::size_t>(N * K));
    std::vector<Index> sorted(static_cast<std::size_t>(K));
    for (Index n = 0; n < N; ++n) {
        if (plan.m[static_cast<std::size_t>(n)] == 0) continue;
        for (Index t = 0; t < K; ++t) {
            const double iv = static_cast<double>(ti(n, t));
            const double lv = static_cast<double>(tl(n, t));
            RLPO_CHECK(iv >= 0 && iv < static_cast<double>(V) && iv == std::floor(iv), fn,
                       "teacher_indices: ", iv, " at [", n, ", ", t,
                       "] is not a vocabulary index in [0, ", V, ")");
            RLPO_CHECK(!std::isnan(lv) && lv < std::numeric_limits<double>::infinity(), fn,
                       "teacher_logprobs: ", lv, " at [", n, ", ", t,
                       "] (NaN and +inf are rejected)");
            RLPO_CHECK(lv <= kTopKLogprobSlack, fn, "teacher_logprobs: ", lv, " at [", n, ", ", t,
                       "] is > 0: a log-probability is <= 0 (", kTopKLogprobSlack,
                       " of rounding is accepted)");
            idx_all[static_cast<std::size_t>(n * K + t)] = static_cast<Index>(iv);
            lp_all[static_cast<std::size_t>(n * K + t)] = lv;
        }
        std::copy(idx_all.begin() + n * K, idx_all.begin() + (n + 1) * K, sorted.begin());
        std::sort(sorted.begin(), sorted.end());
        const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
        RLPO_CHECK(dup == sorted.end(), fn, "teacher_indices: index ",
                   dup == sorted.end() ? 0 : *dup, " repeated in row ", n);
    }
    Result<S> res;
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, N, V);
    const double invT = 1.0 / opts.temperature;
    const auto pass = detail::drive_rows<S, A>(
        fn, plan, N, V, g, t2,
        [&](Index n, detail::Scratch<A>& ws, const detail::GradRow<S>& rg, detail::RowError& err,
            double& aux) -> double {
            const A* zr = detail::widen<A, S>(z, n, ws.z);
            const auto o = static_cast<std::size_t>(n * K);
            return detail::topk_row<S, A>(opts.tail, zr, V, idx_all.data() + o, lp_all.data() + o,
                                          static_cast<std::size_t>(K), invT, ws, rg, err, aux);
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("forward_kl", pass.metric, pass.count);
    res.metrics.add("teacher_topk_mass", pass.aux, pass.count);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

/// DAC-KL as top-p restricted forward KL (see the file comment). `student_logits`,
/// `teacher_logits` `[N, V]`, same scalar type; `mask` `[B, T]` with B·T = N.
template <class DS, class DT, class DM>
Result<::rlpo::detail::scalar_t<DS>> dac_kl(
    const Eigen::MatrixBase<DS>& student_logits, const Eigen::MatrixBase<DT>& teacher_logits,
    const Eigen::MatrixBase<DM>& mask, const DacKLOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DS>>& out = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    using A = detail::acc_t<S>;
    constexpr const char* fn = "distill::dac_kl";
    const detail::LogitPair<DS, DT> in(fn, student_logits, teacher_logits);
    const ConstMatRef<S>&z = in.z, &y = in.y;
    const double t2 = detail::validate(fn, opts);
    const Index N = z.rows(), V = z.cols();
    detail::RowCall<S> c(fn, N, V, mask, norm, out);
    const double invT = 1.0 / opts.temperature;
    std::vector<double> region(static_cast<std::size_t>(N), 0.0);
    const auto pass = detail::drive_rows<S, A>(
        fn, c.plan, N, V, c.g, t2,
        [&](Index n, detail::Scratch<A>& ws, const detail::GradRow<S>& rg, detail::RowError& err,
            double& aux) -> double {
            const A* zr = detail::widen<A, S>(z, n, ws.z);
            const A* yr = detail::widen<A, S>(y, n, ws.y);
            // teacher log-probs at τ, then its top-p region (sorted by probability)
            const A my = detail::check_row(yr, V, "teacher_logits", err);
            if (err.set()) return 0.0;
            double s = 0.0;
            for (Index j = 0; j < V; ++j)
                if (yr[j] > -std::numeric_limits<A>::infinity())
                    s += std::exp((static_cast<double>(yr[j]) - my) * invT);
            const double ls = std::log(s);  // log-probs (y − my)/τ − ls
            // The region in the order of a full sort by decreasing teacher logit (ties by
            // index), taken by selection: the best m entries are moved to the front
            // (nth_element), sorted, and walked; m grows ×8 until the mass reaches top_p. The
            // order is a strict total order, so the walk sees exactly the full sort's prefix.
            std::vector<Index>& order = ws.order;
            std::vector<Index>& idx = ws.idx;
            std::vector<double>& lp = ws.lp;
            order.resize(static_cast<std::size_t>(V));
            std::iota(order.begin(), order.end(), Index(0));
            idx.clear();
            lp.clear();
            const auto before = [&](Index a, Index b) {
                return yr[a] > yr[b] || (yr[a] == yr[b] && a < b);
            };
            double cum = 0.0;
            bool done = false;
            for (Index lo = 0, m = std::min<Index>(V, 256); lo < V && !done;
                 lo = m, m = std::min(V, 8 * m)) {
                if (m < V)
                    std::nth_element(order.begin() + lo, order.begin() + m, order.end(), before);
                std::sort(order.begin() + lo, order.begin() + m, before);
                for (Index r = lo; r < m; ++r) {
                    if (!(cum < opts.top_p)) {
                        done = true;
                        break;
                    }
                    const Index j = order[static_cast<std::size_t>(r)];
                    const double l = (static_cast<double>(yr[j]) - my) * invT - ls;
                    if (l == -std::numeric_limits<double>::infinity()) {
                        done = true;
                        break;
                    }
                    idx.push_back(j);
                    lp.push_back(l);
                    cum += std::exp(l);
                }
            }
            region[static_cast<std::size_t>(n)] = static_cast<double>(idx.size());
            return detail::topk_row<S, A>(TopKTail::Renormalize, zr, V, idx.data(), lp.data(),
                                          idx.size(), invT, ws, rg, err, aux);
        });
    double reg = 0.0;
    for (Index n = 0; n < N; ++n)
        reg += c.plan.m[static_cast<std::size_t>(n)] * region[static_cast<std::size_t>(n)];
    c.res.value = c.g.coef() * pass.value;
    c.res.metrics.add("forward_kl", pass.metric, pass.count);
    c.res.metrics.add("teacher_topk_mass", pass.aux, pass.count);
    c.res.metrics.add("dac_region_size", reg, pass.count);
    ::rlpo::detail::check_finite_result(fn, c.res.value, c.res.metrics);
    return std::move(c.res);
}

}  // namespace rlpo::distill
