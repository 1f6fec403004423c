#pragma once
/// \file
/// PPO clipped surrogate, with clip-higher (ε_l ≠ ε_h), optional dual-clip and a log-ratio clamp.
///
/// Per unmasked token, with lr = clamp(logp − old_logp, −L, L) and r = exp(lr):
///
///     l1 = −A·r̃,   l2 = −A·clip(r, 1 − ε_l, 1 + ε_h),   l = max(l1, l2)
///     dual-clip (c > 1, only where A < 0):   l ← min(l, −A·c)
///
/// with r̃ = r, or r̃ = min(r, δ) with the INTELLECT-2 two-sided clip (δ > 1 + ε_h), and the loss
/// is the aggregation (core/aggregation.hpp) of l over the mask.
///
/// **Two-sided clip (INTELLECT-2)**: Prime Intellect, "INTELLECT-2: A Reasoning Model Trained
/// Through Globally Decentralized Reinforcement Learning" (2025), two-sided GRPO clipping, δ = 4 in
/// its section 4.1 setting; TRL's GRPOConfig `delta`. As in TRL, the unclipped branch's ratio is
/// capped, min(r, δ), for every token. Since δ > 1 + ε_h, this changes nothing where A > 0 (the max
/// already picks the clipped branch for r > 1 + ε_h); where A < 0 it bounds the loss of a huge
/// ratio at −A·δ with zero gradient (like a dual-clip with c = δ, but reported differently: a token
/// capped by δ is not counted in `pg_clipfrac_lower`). Both may be combined (δ first, then the
/// dual-clip min).
///
/// **Gradient** w.r.t. `logp`: ∂l1/∂logp = −A·r·[−L ≤ lr_raw ≤ L]·[r ≤ δ] (the clamps stop the
/// gradient, inclusive at their bounds as `torch.clamp`); the clipped branch contributes
/// −A·r·[1−ε_l ≤ r ≤ 1+ε_h]; the dual-clip constant contributes 0. At exact ties of max/min
/// the gradient is split in half between the branches, as PyTorch's `torch.maximum` /
/// `torch.minimum` do, so the result matches autograd everywhere.
///
/// **Precision and speed**: the pass is vectorised (Eigen array code over chunks of a row, in
/// the storage precision: float inputs are computed in float, double in double; sums are
/// accumulated in double). Rows run in parallel with OpenMP, combined in row order, so the
/// result does not depend on the number of threads.
///
/// **Metrics** (means over unmasked tokens, mask-weighted, merged exactly across micro-batches):
///   * `pg_clipfrac`       — fraction of tokens where the clipped branch is strictly larger (l2 > l1);
///   * `pg_clipfrac_lower` — fraction where A < 0 and the dual-clip bound is active (0 when off);
///   * `ppo_kl`            — mean of −lr (clamped lr, as verl logs it).
///
/// **Defaults** (PPO, Schulman et al. 2017; dual-clip from Ye et al. 2020, "Mastering Complex
/// Control in MOBA Games with Deep RL"; clip-higher from DAPO, Yu et al. 2025): ε_l = ε_h = 0.2,
/// dual-clip off, L = 20 (verl's clamp). Presets: `PPOClipOptions::verl()` (dual-clip c = 3,
/// L = 20: verl's `compute_policy_loss_vanilla`), `::openrlhf()` (no dual-clip, no clamp),
/// `::trl()` (no dual-clip, no clamp), `::dapo()` (ε_h = 0.28), `::intellect2()` (δ = 4).
///
/// **Bad input**: shapes differing from `logp` → rlpo::invalid_argument; ε_l ∉ (0, 1) or ε_h ≤ 0,
/// dual-clip c ≤ 1, δ ≤ 1 + ε_h, L ≤ 0 → rlpo::invalid_argument; a NaN in any input under a non-zero mask →
/// rlpo::invalid_argument naming the input and position. ±inf log-probs are accepted (the
/// clamp makes them finite) unless both are −inf at the same token (ratio undefined), which is
/// reported. Any other non-finite per-token loss or gradient (e.g. finite ±1e300 advantages
/// whose −A·r overflows) → rlpo::invalid_argument listing the inputs at that position; the
/// value and metrics are checked finite (a sum that overflows, or ppo_kl = +inf from a −inf
/// log-prob without a clamp → rlpo::numerical_error). An empty mask gives value 0, gradient 0
/// and metrics 0.
///
/// **Allocates**: nothing besides the result and per-row partial sums; through `policy_loss`
/// the optional `is_weights` are read per packet by the kernel (no weighted copy).

#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace rlpo::policy {

struct PPOClipOptions {
    double clip_low = 0.2;   ///< ε_l: lower clip 1 − ε_l
    double clip_high = 0.2;  ///< ε_h: upper clip 1 + ε_h (DAPO clip-higher: 0.28)
    /// Dual-clip constant c > 1 (applies to tokens with A < 0); unset = off.
    std::optional<double> dual_clip{};
    /// L: log-ratio clamp before exp; +inf disables it.
    double log_ratio_clamp = 20.0;
    /// δ of the INTELLECT-2 two-sided clip (> 1 + ε_h): the unclipped branch uses min(r, δ);
    /// unset = off. TRL: GRPOConfig `delta`.
    std::optional<double> two_sided_delta{};

    /// verl `compute_policy_loss_vanilla`: dual-clip c = 3 always on, clamp ±20.
    static PPOClipOptions verl() {
        PPOClipOptions o;
        o.dual_clip = 3.0;
        return o;
    }
    /// OpenRLHF PolicyLoss: no dual-clip by default, no clamp.
    static PPOClipOptions openrlhf() {
        PPOClipOptions o;
        o.log_ratio_clamp = std::numeric_limits<double>::infinity();
        return o;
    }
    /// TRL GRPOTrainer: ε = 0.2 both sides, no dual-clip, no clamp.
    static PPOClipOptions trl() { return openrlhf(); }
    /// DAPO clip-higher: ε_l = 0.2, ε_h = 0.28.
    static PPOClipOptions dapo() {
        PPOClipOptions o;
        o.clip_high = 0.28;
        return o;
    }
    /// INTELLECT-2: ε = 0.2, two-sided clip δ = 4 (TRL `delta=4`), no clamp as in TRL.
    static PPOClipOptions intellect2() {
        PPOClipOptions o = trl();
        o.two_sided_delta = 4.0;
        return o;
    }
};

namespace detail {
inline void validate(const char* fn, const PPOClipOptions& o) {
    ::rlpo::detail::check_positive(fn, "clip_low", o.clip_low);
    RLPO_CHECK(
        o.clip_low < 1, fn,
        "clip_low: must be < 1 (the lower clip 1 − clip_low must be a positive ratio), given ",
        o.clip_low);
    ::rlpo::detail::check_positive(fn, "clip_high", o.clip_high);
    if (o.dual_clip)
        RLPO_CHECK(std::isfinite(*o.dual_clip) && *o.dual_clip > 1.0, fn,
                   "dual_clip: the constant c must be > 1, given ", *o.dual_clip);
    RLPO_CHECK(o.log_ratio_clamp > 0 && !std::isnan(o.log_ratio_clamp), fn,
               "log_ratio_clamp: must be > 0, given ", o.log_ratio_clamp);
    if (o.two_sided_delta)
        RLPO_CHECK(std::isfinite(*o.two_sided_delta) && *o.two_sided_delta > 1.0 + o.clip_high, fn,
                   "two_sided_delta: δ must be > 1 + clip_high = ", 1.0 + o.clip_high, ", given ",
                   *o.two_sided_delta);
}

/// The PPO clip token kernel (vectorised; run by `run_tokens_simd`, policy/detail/driver.hpp).
/// Computed in the storage precision S. Stats: 0 clipped (l2 > l1), 1 dual-clip hit, 2 −lr.
template <class S>
struct PPOClipKernel {
    using Options = PPOClipOptions;
    using P = ::rlpo::detail::simd::Packet<S>;
    static constexpr const char* name = "policy::ppo_clip";
    static constexpr std::size_t stats = 3;
    static constexpr bool reads_old_logp = true;

    explicit PPOClipKernel(const PPOClipOptions& opts)
        : dual((validate(name, opts), opts.dual_clip.has_value())),
          two_sided(opts.two_sided_delta.has_value()) {
        namespace simd = ::rlpo::detail::simd;
        const S lo = static_cast<S>(1.0 - opts.clip_low), hi = static_cast<S>(1.0 + opts.clip_high);
        const S L = static_cast<S>(opts.log_ratio_clamp);
        const S c = static_cast<S>(dual ? *opts.dual_clip : 0.0);
        const S delta = static_cast<S>(two_sided ? *opts.two_sided_delta : 0.0);
        vL = simd::set1<S>(L);
        vnL = simd::set1<S>(-L);
        vlo = simd::set1<S>(lo);
        vhi = simd::set1<S>(hi);
        vdelta = simd::set1<S>(delta);
        vc = simd::set1<S>(c);
        zero = simd::set1<S>(S(0));
        half = simd::set1<S>(S(0.5));
    }

    /// Weighted: the advantages are scaled by the `is_weights` row `wrow` as they are loaded
    /// (exact: PPO's per-token loss is positively homogeneous in A and the weights are ≥ 0).
    template <bool Weighted>
    void operator()(const ConstMatRef<S>& lp, const ConstMatRef<S>& olp, const ConstMatRef<S>& A,
                    const S* wrow, Index i, Index k, Index T,
                    const ::rlpo::detail::simd::LaneMask<S>& keep, P& loss, P& grad,
                    ::rlpo::detail::simd::Packets<S, 3>& st) const {
        using namespace ::rlpo::detail::simd;
        P a = load_kept(A.data() + i * A.outerStride(), k, T, keep);
        if constexpr (Weighted) a = pmul(a, load_kept(wrow, k, T, keep));
        const P raw = psub(load_kept(lp.data() + i * lp.outerStride(), k, T, keep),
                           load_kept(olp.data() + i * olp.outerStride(), k, T, keep));
        eval(a, raw, loss, grad, st);
    }

    /// The per-packet formula from the advantages `a` and the raw log-ratios
    /// logp − old_logp (masked lanes already zero). The training step's fused pass calls it
    /// with a row's sequence advantage broadcast over the packet.
    EIGEN_ALWAYS_INLINE void eval(const P& a, const P& raw, P& loss, P& grad,
                                  ::rlpo::detail::simd::Packets<S, 3>& st) const {
        using namespace ::rlpo::detail::simd;
        const P na = pnegate(a);
        const P lr = pmin(pmax(raw, vnL), vL);
        const P r = pexp(lr);
        // −A·∂r/∂logp: the clamp stops the gradient outside [−L, L] (inclusive bounds)
        const P g0 = mask_select<S>(mask_and<S>(mask_le<S>(vnL, raw), mask_le<S>(raw, vL)),
                                    pmul(na, r), zero);
        P l1 = pmul(na, r), g1 = g0;
        if (two_sided) {  // unclipped branch uses min(r, δ)
            const auto capped = mask_lt<S>(vdelta, r);
            l1 = pmul(na, mask_select<S>(capped, vdelta, r));
            g1 = mask_select<S>(capped, zero, g0);
        }
        const P l2 = pmul(na, pmin(pmax(r, vlo), vhi));
        const P g2 = mask_select<S>(mask_and<S>(mask_le<S>(vlo, r), mask_le<S>(r, vhi)), g0, zero);
        const auto gt = mask_lt<S>(l1, l2), lt = mask_lt<S>(l2, l1);
        P l = mask_select<S>(gt, l2, l1);
        P gr = mask_select<S>(gt, g2, mask_select<S>(lt, g1, pmul(half, padd(g1, g2))));
        st[0] = mask_indicator<S>(gt);
        st[2] = pnegate(lr);
        if (dual) {  // for A < 0: min(l, −A·c), ties split as torch.minimum
            const auto neg = mask_lt<S>(a, zero);
            const P l3 = pmul(na, vc);
            const auto above = mask_lt<S>(l3, l), below = mask_lt<S>(l, l3);
            st[1] = mask_indicator<S>(mask_and<S>(neg, above));
            const P gd = mask_select<S>(above, zero, mask_select<S>(below, gr, pmul(half, gr)));
            gr = mask_select<S>(neg, gd, gr);
            l = mask_select<S>(neg, mask_select<S>(above, l3, l), l);
        } else {
            st[1] = zero;
        }
        // NaN inputs must surface as a NaN loss (min/max/compares drop them)
        loss =
            mask_select<S>(mask_and<S>(mask_not_nan<S>(raw), mask_not_nan<S>(a)), l, padd(raw, a));
        grad = gr;
    }

    void report(Metrics& m, const std::array<double, 3>& st, double n) const {
        m.add("pg_clipfrac", st[0], n);
        m.add("pg_clipfrac_lower", st[1], n);
        m.add("ppo_kl", st[2], n);
    }

    bool dual, two_sided;
    P vL, vnL, vlo, vhi, vdelta, vc, zero, half;
};
}  // namespace detail

/// PPO clip loss and its gradient w.r.t. `logp`. All inputs `[B, T]`; `advantages` per token
/// (broadcast sequence-level advantages over T before calling).
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> ppo_clip(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const PPOClipOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {}) {
    return detail::run_tokens_simd<detail::PPOClipKernel>(logp, old_logp, advantages, mask, opts,
                                                          norm, out);
}

}  // namespace rlpo::policy
