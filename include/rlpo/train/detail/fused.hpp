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
/// With a GAE plan, each row's whitened advantages and returns are formed at the start of the
/// row (`rollout::detail::gae_row`, as `rollout::gae_advantages` forms them) into the thread's
/// scratch rows, which the packet loop then reads from cache.
///
/// Memory: no input is read at or past a row's extent (`RowWeights::end`: the mask is 0
/// there), so a padded tail costs only its gradient's zeros; every input is prefetched a fixed
/// distance ahead (into the thread's next row near the end of a row's extent); an overwritten
/// float gradient of `kStreamMinBytes` or more is written with streaming stores (rows that
/// start on a packet boundary), so its lines are not read first. None of this changes a bit of
/// the results.
///
/// Errors: the pass only flags a row with a non-finite per-token result or an overflowing
/// weighted gradient (any term); the caller then reruns the composed parts, which throw
/// exactly the composed step's error (naming the part, the input and the position).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/detail/token_pass.hpp>
#include <rlpo/core/kernel_instances.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/critic/value_loss.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>
#include <rlpo/rollout/returns.hpp>

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
};

/// What the fused pass reads and writes. Pointers left null switch a term off.
template <class S>
struct FusedSpec {
    const ConstMatRef<S>* mask = nullptr;
    const ConstMatRef<S>* logp = nullptr;
    const ConstMatRef<S>* old_logp = nullptr;  ///< = logp on-policy
    const ConstMatRef<S>* adv = nullptr;       ///< [B, T], or [B, 1] when seq_adv
    bool seq_adv = false;
    // or GAE per row (adv and returns null): from rewards and old_values with the plan
    const rollout::GAEPlan* gae = nullptr;
    const ConstMatRef<S>* rewards = nullptr;
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
    bool bad = false;  ///< a row flagged a non-finite per-token result or weighted gradient
};

/// How far ahead (entries) the pass prefetches its inputs: 2 KiB.
template <class S>
inline constexpr Index kPrefetchAhead = 2048 / static_cast<Index>(sizeof(S));

/// The pass with the KL and value terms on or off at compile time (no dead accumulators or
/// constants competing for registers).
template <class S, bool KL, bool VF>
inline FusedSums<S> fused_rows(const FusedSpec<S>& f, const RowWeights& w) {
    using namespace ::rlpo::detail::simd;
    using P = Packet<S>;
    constexpr Index W = width<S>;
    const ConstMatRef<S>& mask = *f.mask;
    const Index B = mask.rows(), T = mask.cols();
    const bool kl_grad = KL && f.kl_in_loss;
    struct Row {
        double pg = 0, kl = 0, vf = 0;
        std::array<double, 3> spg{};
        std::array<double, 2> svf{};
        bool bad = false;
    };
    std::vector<Row> rows(static_cast<std::size_t>(B));
    S* const glp_base = f.g_logp->data();
    const GradMode glp_mode = f.g_logp->mode();
    S* const gv_base = VF ? f.g_values->data() : nullptr;
    const GradMode gv_mode = VF ? f.g_values->mode() : GradMode::None;
    // the kernels' constants as locals of the loop (not reloaded through pointers that the
    // gradient stores might alias)
    const policy::detail::PPOClipKernel<S> pg = *f.pg;
    const penalties::detail::KLPacketConsts<S> klc =
        KL ? *f.kl : penalties::detail::KLPacketConsts<S>(penalties::KLOptions{});
    const critic::detail::ValueLossKernel<S> vfk =
        VF ? *f.vf : critic::detail::ValueLossKernel<S>(critic::ValueLossOptions{});
    const bool seq_adv = f.seq_adv;
    // GAE's whitening map (the identity without whitening)
    const rollout::detail::WhitenMap gae_map =
        f.gae && f.gae->options.whiten ? f.gae->whitening : rollout::detail::WhitenMap{1, 0, 1, 0};
    const bool large =
        static_cast<double>(B) * static_cast<double>(T) * sizeof(S) >= kStreamMinBytes;
    // rows handed out 32 at a time: the row after this one, into which the prefetches below
    // reach near a row's end, is then most often this thread's own next row
    ::rlpo::detail::parallel_for_dynamic(B, 32, B * T > 32768, [&](Index i) RLPO_SIMD_FLATTEN {
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
        const S* ap = nullptr;
        const S* Rp = nullptr;
        if (f.gae) {
            // the row's advantages and returns, formed here as rollout::gae_advantages forms
            // them (the same row function and whitening map), into this thread's scratch
            thread_local std::vector<S> buf;
            if (static_cast<Index>(buf.size()) < 2 * T) buf.resize(static_cast<std::size_t>(2 * T));
            S* ar = buf.data();
            S* gr = ar + T;
            rollout::detail::RowScan sc;
            rollout::detail::gae_row<S, rollout::detail::GAERowOut::Whitened>(
                *f.rewards, f.rewards->cols() == 1 && T != 1, *f.old_values, mask, f.gae->options,
                i, ar, gr, sc, &gae_map);
            if (sc.bad_input >= 0 || sc.overflow_t >= 0) {
                row.bad = true;  // the composed rerun reports it as gae_advantages does
                return;
            }
            ap = ar;
            Rp = gr;
        } else {
            ap = f.adv->data() + i * f.adv->outerStride();
            if constexpr (VF) Rp = f.returns->data() + i * f.returns->outerStride();
        }
        const S* rp = KL ? f.ref_logp->data() + i * f.ref_logp->outerStride() : nullptr;
        const S* vp = VF ? f.values->data() + i * f.values->outerStride() : nullptr;
        const S* vop =
            VF && vfk.clip ? f.old_values->data() + i * f.old_values->outerStride() : nullptr;
        const P zero = set1<S>(S(0));
        // the weights each part's pass forms: c·coef rounded to S
        const P gs_pg = set1<S>(static_cast<S>(c * f.coef_pg));
        const P gs_kl = set1<S>(static_cast<S>(c * f.coef_kl));
        const P gs_vf = set1<S>(static_cast<S>(c * f.coef_vf));
        const P a_row = seq_adv ? set1<S>(ap[0]) : zero;
        // the KL's stat is its loss: one accumulator serves both (the same sums)
        P acc_pg = zero, acc_kl = zero, acc_vf = zero, bad = zero;
        Packets<S, 3> st_pg, a_pg;
        Packets<S, 2> st_vf, a_vf;
        for (std::size_t j = 0; j < 3; ++j) a_pg[j] = zero;
        for (std::size_t j = 0; j < 2; ++j) a_vf[j] = zero;
        int pending = 0;
        const auto flush = [&] {
            row.pg += static_cast<double>(Eigen::internal::predux(acc_pg));
            acc_pg = zero;
            for (std::size_t j = 0; j < 3; ++j) {
                row.spg[j] += static_cast<double>(Eigen::internal::predux(a_pg[j]));
                a_pg[j] = zero;
            }
            if constexpr (KL) {
                row.kl += static_cast<double>(Eigen::internal::predux(acc_kl));
                acc_kl = zero;
            }
            if constexpr (VF) {
                row.vf += static_cast<double>(Eigen::internal::predux(acc_vf));
                acc_vf = zero;
                for (std::size_t j = 0; j < 2; ++j) {
                    row.svf[j] += static_cast<double>(Eigen::internal::predux(a_vf[j]));
                    a_vf[j] = zero;
                }
            }
            pending = 0;
        };
        // a lane whose loss or gradient is not finite (`flag_non_finite`)
        const auto flag = [&](const P& x, const P& y) { flag_non_finite<S>(bad, x, y); };
        // software prefetch a fixed distance ahead in every input stream, into the thread's
        // next row near the end of this one: a row is often a page of its own, where the
        // hardware prefetchers stop and start over
        // (within the rows' extents: a padded tail is never read)
        const Index stop = ::rlpo::detail::row_stop(w, r, T, W);
        const Index next_stop = i + 1 < B ? ::rlpo::detail::row_stop(w, r + 1, T, W) : 0;
        const auto prefetch_ahead = [&](Index k) {
            Index at = k + kPrefetchAhead<S>;
            std::ptrdiff_t row_step = 0;
            if (at >= stop) {
                at -= stop;
                if (at >= next_stop) return;
                row_step = 1;
            }
            const auto pf = [&](const S* p, const ConstMatRef<S>* x) {
                prefetch_l1(p + row_step * x->outerStride() + at);
            };
            pf(mk, f.mask);
            pf(lp, f.logp);
            if (olp != lp) pf(olp, f.old_logp);
            if (!seq_adv && !f.gae) pf(ap, f.adv);
            if constexpr (KL) pf(rp, f.ref_logp);
            if constexpr (VF) {
                pf(vp, f.values);
                if (vop) pf(vop, f.old_values);
                if (!f.gae) pf(Rp, f.returns);
            }
        };
        // overwritten rows through the gradient's packet view (`GradRow`: streaming stores
        // for float rows aligned for packets, so the lines are not read first), streamed only
        // for a gradient too large to stay in cache anyway; added rows keep the parts' order
        // of additions below
        const auto view = [&](const ::rlpo::detail::GradWriter<S>* g, GradMode mode) {
            ::rlpo::detail::GradRow<S> v;
            if (g && g->active() && mode == GradMode::Write) {
                v = g->row_view(i, T, 1.0).template from<P>(0);
                v.stream = v.stream && large;
            }
            return v;
        };
        const ::rlpo::detail::GradRow<S> out_lp = view(f.g_logp, glp_mode);
        const ::rlpo::detail::GradRow<S> out_v =
            VF ? view(f.g_values, gv_mode) : ::rlpo::detail::GradRow<S>{};
        const auto put = [&](const ::rlpo::detail::GradRow<S>& o, Index k, const P& v) {
            if (k + W <= T)
                o.packet(k, v);
            else
                store_n(o.dst, k, T, v);
        };
        for (Index k = stop; k < T; k += W) {  // the masked tail: zeros, nothing read
            if (out_lp.active()) put(out_lp, k, zero);
            if (out_v.active()) put(out_v, k, zero);
        }
        for (Index k = 0; k < stop; k += W) {
            prefetch_ahead(k);
            const P m = load(mk, k, T);
            const LaneMask<S> keep = mask_neq<S>(m, zero);
            if (!mask_any<S>(keep)) {
                if (out_lp.active()) put(out_lp, k, zero);
                if (out_v.active()) put(out_v, k, zero);
                continue;
            }
            const P x = load_kept(lp, k, T, keep);
            const P xo = load_kept(olp, k, T, keep);
            // policy surrogate
            const P a = seq_adv ? mask_zero_unless<S>(keep, a_row) : load_kept(ap, k, T, keep);
            P l_pg, g_pg;
            pg.eval(a, psub(x, xo), l_pg, g_pg, st_pg);
            P gk_pg = zero, gk_kl = zero;
            if (glp) {
                gk_pg = rounded(pmul(pmul(g_pg, m), gs_pg));
                flag(l_pg, gk_pg);
            } else {
                flag(l_pg, g_pg);
            }
            // (the parts' sums: explicit multiply-adds, and the weighted gradients rounded, so
            // that no compiler fuses one copy and not the other: docs/architecture.md)
            acc_pg = Eigen::internal::pmadd(l_pg, m, acc_pg);
            for (std::size_t j = 0; j < 3; ++j)
                a_pg[j] = Eigen::internal::pmadd(st_pg[j], m, a_pg[j]);
            // KL
            if constexpr (KL) {
                const P y = load_kept(rp, k, T, keep);
                P l_kl, g_kl;
                ::rlpo::penalties::detail::kl_packet<S>(psub(kl_grad ? x : xo, y), klc, l_kl, g_kl);
                if (kl_grad && glp) {
                    gk_kl = rounded(pmul(pmul(g_kl, m), gs_kl));
                    flag(l_kl, gk_kl);
                } else {
                    flag(l_kl, g_kl);
                }
                acc_kl = Eigen::internal::pmadd(l_kl, m, acc_kl);
            }
            if (glp) {  // as the parts add into the (zeroed) buffer one after the other
                P out = glp_mode == GradMode::Add
                            ? padd(load(static_cast<const S*>(glp), k, T), gk_pg)
                            : gk_pg;
                if (kl_grad) out = padd(out, gk_kl);
                if (out_lp.active())
                    put(out_lp, k, out);
                else
                    store_n(glp, k, T, out);
            }
            // value loss
            if constexpr (VF) {
                const P v = load_kept(vp, k, T, keep);
                const P R = load_kept(Rp, k, T, keep);
                const P vo = vop ? load_kept(vop, k, T, keep) : zero;
                P l_vf, g_vf;
                vfk.eval(v, vo, R, l_vf, g_vf, st_vf);
                if (gv) {
                    const P gk = rounded(pmul(pmul(g_vf, m), gs_vf));
                    flag(l_vf, gk);
                    if (gv_mode == GradMode::Add)
                        store_n(gv, k, T, padd(load(static_cast<const S*>(gv), k, T), gk));
                    else
                        put(out_v, k, gk);
                } else {
                    flag(l_vf, g_vf);
                }
                acc_vf = Eigen::internal::pmadd(l_vf, m, acc_vf);
                for (std::size_t j = 0; j < 2; ++j)
                    a_vf[j] = Eigen::internal::pmadd(st_vf[j], m, a_vf[j]);
            }
            if (++pending == 8) flush();
        }
        flush();
        if (out_lp.stream || out_v.stream) store_fence();
        row.pg *= c;  // row.kl stays unweighted: it is also the KL's stat
        row.vf *= c;
        row.bad = any_flagged<S>(bad);
    });
    FusedSums<S> out;
    for (std::size_t r = 0; r < rows.size(); ++r) {  // row order, as the parts combine rows
        const Row& row = rows[r];
        out.pg.value += row.pg;
        // (the product rounded first, as the KL part forms c·row before adding it: a compiler
        // free to fuse it into the sum gave a different last bit on AVX-512 builds)
        out.kl.value += ::rlpo::detail::simd::rounded(w.c[r] * row.kl);
        out.kl.stats[0] += row.kl;
        out.vf.value += row.vf;
        for (std::size_t j = 0; j < 3; ++j) out.pg.stats[j] += row.spg[j];
        for (std::size_t j = 0; j < 2; ++j) out.vf.stats[j] += row.svf[j];
        out.bad = out.bad || row.bad;
    }
    return out;
}

/// (Not inline: one of the kernels that can be compiled once, core/kernel_instances.hpp.)
template <class S>
FusedSums<S> fused_pass(const FusedSpec<S>& f, const RowWeights& w) {
    const bool kl = f.kl != nullptr, vf = f.vf != nullptr;
    if (kl && vf) return fused_rows<S, true, true>(f, w);
    if (kl) return fused_rows<S, true, false>(f, w);
    if (vf) return fused_rows<S, false, true>(f, w);
    return fused_rows<S, false, false>(f, w);
}

RLPO_KERNEL_INSTANCE(FusedSums<float> fused_pass<float>(const FusedSpec<float>&, const RowWeights&))
RLPO_KERNEL_INSTANCE(FusedSums<double> fused_pass<double>(const FusedSpec<double>&,
                                                          const RowWeights&))

}  // namespace rlpo::train::detail
