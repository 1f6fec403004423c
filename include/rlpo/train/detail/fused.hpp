#pragma once
/// \file
/// The training step's single token pass (internal): the PPO clip surrogate, the KL penalty
/// (in the loss, or its reward-placement metric) and the clipped value loss evaluated together
/// per SIMD packet, so that each `[B, T]` input is read once and each gradient written once.
///
/// Bit-for-bit the composition of the parts (`policy::ppo_clip`, `penalties::kl_penalty`,
/// `critic::value_loss`, each adding into the step's zeroed buffers): the same packet formulas
/// (the parts' kernels), the same weighting (c_i·m·coef rounded to S as the parts do), the
/// same gradient sums ((0 + g_pg) + g_kl), the same per-term row sums (in S over 8 packets,
/// then in double, rows added in row order). Per-sequence advantages (`[B, 1]`) are read once
/// per row and broadcast in registers, equal to a `[B, T]` broadcast (0 at masked tokens).
///
/// Errors: the pass only flags a non-finite per-token result or an overflowing weighted
/// gradient per term and row; the caller then reruns the composed parts, which throw exactly
/// the composed step's error (naming the input and position).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/detail/token_pass.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/critic/value_loss.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

namespace rlpo::train::detail {

/// One term's sums over the batch, before the GradientOut coefficient.
template <std::size_t K>
struct TermSums {
    double value = 0.0;
    std::array<double, K> stats{};
    bool bad = false;  ///< a row flagged a non-finite per-token result or gradient
};

/// What the fused pass reads and writes. Pointers left null switch a term off.
template <class S>
struct FusedSpec {
    const ConstMatRef<S>* mask = nullptr;
    const ConstMatRef<S>* logp = nullptr;
    const ConstMatRef<S>* old_logp = nullptr;  ///< = logp on-policy
    const ConstMatRef<S>* adv = nullptr;       ///< [B, T], or [B, 1] when seq_adv
    bool seq_adv = false;
    const policy::detail::PPOClipKernel<S>* pg = nullptr;
    // KL: in the loss (gradient into grad_logp, of logp − ref) or the reward-placement metric
    // (no gradient, of old_logp − ref)
    const penalties::detail::KLPacketConsts<S>* kl = nullptr;
    bool kl_in_loss = true;
    const ConstMatRef<S>* ref_logp = nullptr;
    // value loss
    const critic::detail::ValueLossKernel<S>* vf = nullptr;
    const ConstMatRef<S>* values = nullptr;
    const ConstMatRef<S>* old_values = nullptr;
    const ConstMatRef<S>* returns = nullptr;
    // destinations (inactive writers skip) and the coefficients of each term's GradientOut
    const ::rlpo::detail::GradWriter<S>* g_logp = nullptr;
    double coef_pg = 1.0, coef_kl = 1.0;
    const ::rlpo::detail::GradWriter<S>* g_values = nullptr;
    double coef_vf = 1.0;
};

template <class S>
struct FusedSums {
    TermSums<3> pg;
    TermSums<1> kl;
    TermSums<2> vf;
};

template <class S>
inline FusedSums<S> fused_pass(const FusedSpec<S>& f, const RowWeights& w) {
    using namespace ::rlpo::detail::simd;
    using P = Packet<S>;
    constexpr Index W = width<S>;
    const ConstMatRef<S>& mask = *f.mask;
    const Index B = mask.rows(), T = mask.cols();
    const bool use_kl = f.kl != nullptr, use_vf = f.vf != nullptr;
    const bool kl_grad = use_kl && f.kl_in_loss;
    struct Row {
        double pg = 0, kl = 0, vf = 0;
        std::array<double, 3> spg{};
        std::array<double, 1> skl{};
        std::array<double, 2> svf{};
        bool bad_pg = false, bad_kl = false, bad_vf = false;
    };
    std::vector<Row> rows(static_cast<std::size_t>(B));
    S* const glp_base = f.g_logp->data();
    const GradMode glp_mode = f.g_logp->mode();
    S* const gv_base = use_vf ? f.g_values->data() : nullptr;
    const GradMode gv_mode = use_vf ? f.g_values->mode() : GradMode::None;
    ::rlpo::detail::parallel_for_dynamic(B, 4, B * T > 32768, [&](Index i) {
        const auto r = static_cast<std::size_t>(i);
        Row& row = rows[r];
        const double c = w.c[r];
        S* glp = glp_base ? f.g_logp->row(i) : nullptr;
        S* gv = gv_base ? f.g_values->row(i) : nullptr;
        if (w.len[r] <= 0) {
            if (glp && glp_mode == GradMode::Write) std::fill(glp, glp + T, S(0));
            if (gv && gv_mode == GradMode::Write) std::fill(gv, gv + T, S(0));
            return;
        }
        const S* mk = mask.data() + i * mask.outerStride();
        const S* lp = f.logp->data() + i * f.logp->outerStride();
        const S* olp = f.old_logp->data() + i * f.old_logp->outerStride();
        const S* ap = f.adv->data() + i * f.adv->outerStride();
        const S* rp = use_kl ? f.ref_logp->data() + i * f.ref_logp->outerStride() : nullptr;
        const S* vp = use_vf ? f.values->data() + i * f.values->outerStride() : nullptr;
        const S* vop =
            use_vf && f.vf->clip ? f.old_values->data() + i * f.old_values->outerStride() : nullptr;
        const S* Rp = use_vf ? f.returns->data() + i * f.returns->outerStride() : nullptr;
        const P zero = set1<S>(S(0));
        const P all = pcmp_eq(zero, zero);
        const P inf = set1<S>(std::numeric_limits<S>::infinity());
        // the weights each part's pass forms: c·coef rounded to S
        const P gs_pg = set1<S>(static_cast<S>(c * f.coef_pg));
        const P gs_kl = set1<S>(static_cast<S>(c * f.coef_kl));
        const P gs_vf = set1<S>(static_cast<S>(c * f.coef_vf));
        const P a_row = f.seq_adv ? set1<S>(ap[0]) : zero;
        P acc_pg = zero, acc_kl = zero, acc_vf = zero;
        P bad_pg = zero, bad_kl = zero, bad_vf = zero;
        Packets<S, 3> st_pg, a_pg;
        Packets<S, 1> a_kl;
        Packets<S, 2> st_vf, a_vf;
        for (std::size_t j = 0; j < 3; ++j) a_pg[j] = zero;
        a_kl[0] = zero;
        for (std::size_t j = 0; j < 2; ++j) a_vf[j] = zero;
        int pending = 0;
        const auto flush = [&] {
            row.pg += static_cast<double>(Eigen::internal::predux(acc_pg));
            acc_pg = zero;
            for (std::size_t j = 0; j < 3; ++j) {
                row.spg[j] += static_cast<double>(Eigen::internal::predux(a_pg[j]));
                a_pg[j] = zero;
            }
            if (use_kl) {
                row.kl += static_cast<double>(Eigen::internal::predux(acc_kl));
                row.skl[0] += static_cast<double>(Eigen::internal::predux(a_kl[0]));
                acc_kl = zero;
                a_kl[0] = zero;
            }
            if (use_vf) {
                row.vf += static_cast<double>(Eigen::internal::predux(acc_vf));
                acc_vf = zero;
                for (std::size_t j = 0; j < 2; ++j) {
                    row.svf[j] += static_cast<double>(Eigen::internal::predux(a_vf[j]));
                    a_vf[j] = zero;
                }
            }
            pending = 0;
        };
        const auto finite = [&](const P& x) { return pcmp_lt(Eigen::internal::pabs(x), inf); };
        for (Index k = 0; k < T; k += W) {
            const P m = load(mk, k, T);
            const P keep = pandnot(all, pcmp_eq(m, zero));
            if (!Eigen::internal::predux_any(keep)) {
                if (glp && glp_mode == GradMode::Write) store_n(glp, k, T, zero);
                if (gv && gv_mode == GradMode::Write) store_n(gv, k, T, zero);
                continue;
            }
            const P x = load_kept(lp, k, T, keep);
            const P xo = load_kept(olp, k, T, keep);
            // policy surrogate
            const P a = f.seq_adv ? pand(a_row, keep) : load_kept(ap, k, T, keep);
            P l_pg, g_pg;
            f.pg->eval(a, psub(x, xo), l_pg, g_pg, st_pg);
            P gk_pg = zero, gk_kl = zero;
            if (glp) {
                gk_pg = pmul(pmul(g_pg, m), gs_pg);
                bad_pg = por(bad_pg, pandnot(all, pand(finite(l_pg), finite(gk_pg))));
            } else {
                bad_pg = por(bad_pg, pandnot(all, pand(finite(l_pg), finite(g_pg))));
            }
            acc_pg = padd(acc_pg, pmul(l_pg, m));
            for (std::size_t j = 0; j < 3; ++j) a_pg[j] = padd(a_pg[j], pmul(st_pg[j], m));
            // KL
            if (use_kl) {
                const P y = load_kept(rp, k, T, keep);
                P l_kl, g_kl;
                ::rlpo::penalties::detail::kl_packet<S>(psub(kl_grad ? x : xo, y), *f.kl, l_kl,
                                                        g_kl);
                if (kl_grad && glp) {
                    gk_kl = pmul(pmul(g_kl, m), gs_kl);
                    bad_kl = por(bad_kl, pandnot(all, pand(finite(l_kl), finite(gk_kl))));
                } else {
                    bad_kl = por(bad_kl, pandnot(all, pand(finite(l_kl), finite(g_kl))));
                }
                const P lm = pmul(l_kl, m);
                acc_kl = padd(acc_kl, lm);
                a_kl[0] = padd(a_kl[0], lm);
            }
            if (glp) {  // as the parts add into the (zeroed) buffer one after the other
                P out = glp_mode == GradMode::Add
                            ? padd(load(static_cast<const S*>(glp), k, T), gk_pg)
                            : gk_pg;
                if (kl_grad) out = padd(out, gk_kl);
                store_n(glp, k, T, out);
            }
            // value loss
            if (use_vf) {
                const P v = load_kept(vp, k, T, keep);
                const P R = load_kept(Rp, k, T, keep);
                const P vo = vop ? load_kept(vop, k, T, keep) : zero;
                P l_vf, g_vf;
                f.vf->eval(v, vo, R, l_vf, g_vf, st_vf);
                if (gv) {
                    const P gk = pmul(pmul(g_vf, m), gs_vf);
                    bad_vf = por(bad_vf, pandnot(all, pand(finite(l_vf), finite(gk))));
                    if (gv_mode == GradMode::Add)
                        store_n(gv, k, T, padd(load(static_cast<const S*>(gv), k, T), gk));
                    else
                        store_n(gv, k, T, gk);
                } else {
                    bad_vf = por(bad_vf, pandnot(all, pand(finite(l_vf), finite(g_vf))));
                }
                acc_vf = padd(acc_vf, pmul(l_vf, m));
                for (std::size_t j = 0; j < 2; ++j) a_vf[j] = padd(a_vf[j], pmul(st_vf[j], m));
            }
            if (++pending == 8) flush();
        }
        flush();
        row.pg *= c;
        row.kl *= c;
        row.vf *= c;
        row.bad_pg = Eigen::internal::predux_any(bad_pg);
        row.bad_kl = Eigen::internal::predux_any(bad_kl);
        row.bad_vf = Eigen::internal::predux_any(bad_vf);
    });
    FusedSums<S> out;
    for (const Row& row : rows) {  // row order, as the parts combine their rows
        out.pg.value += row.pg;
        out.kl.value += row.kl;
        out.vf.value += row.vf;
        for (std::size_t j = 0; j < 3; ++j) out.pg.stats[j] += row.spg[j];
        out.kl.stats[0] += row.skl[0];
        for (std::size_t j = 0; j < 2; ++j) out.vf.stats[j] += row.svf[j];
        out.pg.bad = out.pg.bad || row.bad_pg;
        out.kl.bad = out.kl.bad || row.bad_kl;
        out.vf.bad = out.vf.bad || row.bad_vf;
    }
    return out;
}

}  // namespace rlpo::train::detail
