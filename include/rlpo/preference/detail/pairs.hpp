#pragma once
/// \file
/// The shared driver of the pairwise preference losses (internal): everything a DPO-family loss
/// does besides its per-pair math.
///
/// A loss type is a *kernel*, a struct with
///
/// ```cpp
/// struct HingeKernel {
///     static constexpr Pairing pairing = Pairing::Pair;  // or SortedPaired / SortedUnpaired (AOT)
///     static constexpr bool needs_lengths = false;       // true: reads the completion lengths
///     static void validate(const char* fn, const DPOOptions& o);  // throws on bad options
///     static PairLossGrad eval(const PairInput& p, const DPOOptions& o);  // ℓ, ∂ℓ/∂u, ∂ℓ/∂s
/// };
/// ```
///
/// and one row of `RLPO_DPO_LOSSES` (preference/dpo.hpp). The driver (`dpo_loss` + `run_kernel`) owns the
/// rest: the float/double static_assert, reading the four `[B]` vectors (shape, size and
/// non-finite checks naming the input and the pair), the completion lengths, the mean over the
/// pairs (or over a global `num_pairs`), the weighted sum of several loss types, the gradient
/// sink (one `[2, B]` gradient: row 0 chosen, row 1 rejected) and TRL's metrics. This file
/// holds the pieces the driver needs besides the options (inputs, pairing, sorting); the
/// driver itself is `dpo_loss` in preference/dpo.hpp (its options are the family's).

#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/lengths.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

namespace rlpo::preference::detail {

/// How a kernel's pairs are formed.
enum class Pairing {
    Pair,          ///< pair i: (u_c[i], u_r[i]) with u = logp − ref_logp
    SortedPaired,  ///< AOT: k-th smallest (π_c − π_r) against the k-th smallest (ref_c − ref_r)
    SortedUnpaired,  ///< AOT unpaired: k-th smallest u_c against the k-th smallest u_r
    ChosenNLL        ///< `sft`: the batch's token-mean NLL of the chosen completions (raw π_c)
};

/// One pair's inputs, in double. For `Pair` kernels `uc`, `ur` are the log-ratios
/// u = logp − ref_logp and `sc`, `sr` their f-divergence scores (= u for reverse KL, DPO); for
/// the sorted kernels `uc` is the differentiable sorted quantity and `ur` its sorted opponent
/// (see `Pairing`; `sc`, `sr` unused). `len_c`, `len_r` are the completion lengths clamped to
/// ≥ 1 (1 when no lengths were given).
struct PairInput {
    double uc, ur, sc, sr, len_c, len_r;
};

/// A pair's loss and its derivatives w.r.t. `uc`, `ur` (where the kernel reads the raw
/// log-ratios) and `sc`, `sr` (where it reads the scores); the driver applies the chain rule.
struct PairLossGrad {
    double loss = 0.0, d_uc = 0.0, d_ur = 0.0, d_sc = 0.0, d_sr = 0.0;
};

/// A `[B]` vector (N×1 or 1×N) copied to doubles; NaN and ±inf are errors naming the entry.
template <class D>
inline std::vector<double> read_pairs(const char* fn, const char* name,
                                      const Eigen::MatrixBase<D>& x, Index B, const char* like) {
    const auto& v = x.derived();
    RLPO_CHECK(v.rows() == 1 || v.cols() == 1 || v.size() == 0, fn, name,
               ": expected a vector (one entry per pair), given shape [", v.rows(), ", ", v.cols(),
               "]");
    if (B >= 0)
        RLPO_CHECK(v.size() == B, fn, name, ": expected ", B, " entries (same as ", like,
                   "), given ", v.size());
    std::vector<double> out(static_cast<std::size_t>(v.size()));
    const bool col = v.cols() == 1;
    for (Index k = 0; k < v.size(); ++k) {
        const double s = static_cast<double>(col ? v(k, 0) : v(0, k));
        if (std::isnan(s))
            ::rlpo::detail::fail(fn, name, ": NaN at pair ", k, " (entries must be finite)");
        RLPO_CHECK(
            std::isfinite(s), fn, name, ": non-finite value ", s, " at pair ", k,
            " (entries must be finite: a log-prob of ±inf makes the loss undefined or infinite)");
        out[static_cast<std::size_t>(k)] = s;
    }
    return out;
}

/// The four `[B]` log-prob vectors of a paired loss, read and checked (`read_pairs`) in the
/// anchors' order: policy chosen (which fixes B), policy rejected, reference chosen,
/// reference rejected.
struct FourLogps {
    std::vector<double> pc, pr, rc, rr;
    Index B = 0;
    const char* fn = "";
    /// Another `[B]` input of the call (lengths, rewards, weights), read like the four.
    template <class D>
    std::vector<double> read(const char* name, const Eigen::MatrixBase<D>& x) const {
        return read_pairs(fn, name, x, B, "policy_chosen_logps");
    }
};

/// The completion lengths |y_c|, |y_r| of a call (`CompletionLengths`), read like its `[B]`
/// inputs (sized like `like`, finite) and checked >= 0 (both empty when none are given).
inline std::pair<std::vector<double>, std::vector<double>> read_lengths(
    const char* fn, const std::optional<CompletionLengths>& lengths, Index B,
    const char* like = "policy_chosen_logps") {
    std::pair<std::vector<double>, std::vector<double>> l;
    if (!lengths) return l;
    l.first = read_pairs(fn, "lengths.chosen", lengths->chosen, B, like);
    l.second = read_pairs(fn, "lengths.rejected", lengths->rejected, B, like);
    for (std::size_t k = 0; k < l.first.size(); ++k)
        RLPO_CHECK(l.first[k] >= 0 && l.second[k] >= 0, fn,
                   "lengths: must be >= 0, given a negative length at pair ", k);
    return l;
}
template <class D1, class D2, class D3, class D4>
inline FourLogps read_four(const char* fn, const Eigen::MatrixBase<D1>& policy_chosen,
                           const Eigen::MatrixBase<D2>& policy_rejected,
                           const Eigen::MatrixBase<D3>& ref_chosen,
                           const Eigen::MatrixBase<D4>& ref_rejected) {
    static_assert(::rlpo::detail::is_supported_scalar_v<::rlpo::detail::scalar_t<D1>>,
                  "rlpo: inputs must be float or double");
    const char* like = "policy_chosen_logps";
    FourLogps f;
    f.fn = fn;
    f.pc = read_pairs(fn, like, policy_chosen, -1, "");
    f.B = static_cast<Index>(f.pc.size());
    f.pr = read_pairs(fn, "policy_rejected_logps", policy_rejected, f.B, like);
    f.rc = read_pairs(fn, "ref_chosen_logps", ref_chosen, f.B, like);
    f.rr = read_pairs(fn, "ref_rejected_logps", ref_rejected, f.B, like);
    return f;
}

/// Write one gradient entry (`GradWriter::put`) after checking that it is finite in the
/// storage type S: a finite input whose derivative overflows (log-probs of ±1e300, or of ±3e38
/// in float) is an rlpo::numerical_error naming the entry, never a silent inf (docs/contract.md,
/// section 5). Nothing is checked when no gradient is wanted.
template <class S>
inline void put_finite(const char* fn, const ::rlpo::detail::GradWriter<S>& g, Index row, Index col,
                       double v) {
    if (!g.active()) return;
    const double w = g.coef() * v;
    if (!(std::isfinite(w) && std::abs(w) <= static_cast<double>(std::numeric_limits<S>::max())))
        ::rlpo::detail::fail_numerical(fn, "gradient: entry [", row, ", ", col,
                                       "] is not finite in the storage type (", w,
                                       "): the inputs of that pair overflow the derivative");
    g.put(row, col, v);
}

/// Indices 0..n−1 ordered by `x` (ascending; ties keep their index order).
inline std::vector<std::size_t> argsort(const std::vector<double>& x) {
    std::vector<std::size_t> idx(x.size());
    std::iota(idx.begin(), idx.end(), std::size_t{0});
    std::stable_sort(idx.begin(), idx.end(),
                     [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
    return idx;
}

}  // namespace rlpo::preference::detail
