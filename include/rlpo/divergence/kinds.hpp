#pragma once
/// \file
/// The divergence kinds of the vocabulary pipeline: `Divergence` (enum, display names and the
/// name parser), `DistillOptions` (hyper-parameters, presets and the fast path's advanced
/// tuning) and their validation. The formulas are in distill/divergences.hpp.

#include <rlpo/core/error.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/types.hpp>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <string>

namespace rlpo::distill {

enum class Divergence { ForwardKL, ReverseKL, JSD, SkewKL, SkewReverseKL, TVD, ChiSquared };

namespace detail {
/// Every accepted spelling; the first row of a kind is its canonical (metric) name.
inline constexpr NameRow<Divergence> divergence_names[] = {
    {"forward_kl", Divergence::ForwardKL},
    {"fkl", Divergence::ForwardKL},
    {"kl", Divergence::ForwardKL},
    {"reverse_kl", Divergence::ReverseKL},
    {"rkl", Divergence::ReverseKL},
    {"jsd", Divergence::JSD},
    {"skew_kl", Divergence::SkewKL},
    {"skl", Divergence::SkewKL},
    {"skew_reverse_kl", Divergence::SkewReverseKL},
    {"srkl", Divergence::SkewReverseKL},
    {"tvd", Divergence::TVD},
    {"chi2", Divergence::ChiSquared},
};
inline constexpr NameTable divergence_table{divergence_names};
}  // namespace detail

/// Metric / display name.
inline const char* to_string(Divergence d) { return detail::divergence_table.name_of(d); }

/// Parse `forward_kl`/`fkl`/`kl`, `reverse_kl`/`rkl`, `jsd`, `skew_kl`/`skl`,
/// `skew_reverse_kl`/`srkl`, `tvd`, `chi2`; unknown names throw with the valid list.
inline Divergence parse_divergence(const std::string& name) {
    return detail::divergence_table.parse("distill::parse_divergence", "divergence", name);
}

/// Advanced tuning of the fast path of the dense divergences (`DistillOptions::tuning`), for
/// tests and benchmarks; the defaults are the tuned values. The row split never changes a
/// result (bit for bit); the lean settings choose JSD's value sweep, whose forms agree to
/// float accuracy.
struct FastPathTuning {
    /// Row split when the per-thread working set of the row-block mode exceeds this many
    /// bytes (see `dense_rows_fast`): 0 splits every multi-threaded pass, SIZE_MAX never.
    std::size_t split_bytes = std::size_t(3) << 19;  // 1.5 MiB of a core's 2 MiB L2
    /// Move the row split's chunk ranges by a fixed pattern every step instead of after the
    /// sweep times (`balance_ranges`), so that tests see rows swept under changing ranges.
    bool shuffle_ranges = false;
    /// JSD takes the lean value sweep (`kLeanCapable`) when its row-block working set (7·V
    /// floats) exceeds this many bytes: 0 always, SIZE_MAX never.
    std::size_t lean_bytes = std::size_t(3) << 19;
    /// Every chunk of JSD's lean sweep takes the log form (`kLeanCapable`), so that tests see
    /// it on ordinary rows.
    bool lean_log_form = false;
    /// The row split gives way to row blocks for the rest of a call when its threads spend
    /// more than this fraction of the call waiting for each other at its per-step barriers
    /// (judged after every step, once 1 ms was lost): on a busy host a descheduled thread
    /// holds every other one there. Above 1: never.
    double split_idle_fraction = 0.5;
    /// How long thread 0 waits for the team to check in before a row split, in seconds (a
    /// thread the host does not run now would hold every step's barrier); without the whole
    /// team the call runs in row blocks. Below 0: as long as it takes.
    double split_checkin_seconds = 5e-4;
    /// After a call's row split gave way (at the check-in or after a step: a busy host), every
    /// call that starts within this many seconds runs in row blocks from the start (in the
    /// whole process), instead of paying a scheduler slice before it gives way again. 0:
    /// every call tries the split.
    double split_backoff_seconds = 0.1;
    /// Tests: the row split gives way to row blocks after this step (−1: by the idle fraction
    /// only).
    Index split_fallback_step = -1;
    /// Rows per block of the row-block mode (blocks are taken in order by whichever thread is
    /// free): 0 chooses max(min(8, ⌈N / threads⌉), ⌈N / (8 · threads)⌉).
    Index row_block_rows = 0;
};

/// What the fast path did (`DistillOptions::stats`, optional): the rows it sent to the exact
/// path (non-finite logits, sums or values), added to by every call that points here.
struct FastPathStats {
    std::atomic<std::size_t> exact_rows{0};
    /// calls whose row split gave way to row blocks (at the team's check-in or after a step:
    /// `FastPathTuning::split_checkin_seconds`, `split_idle_fraction`)
    std::atomic<std::size_t> split_fallbacks{0};
};

struct DistillOptions {
    Divergence divergence = Divergence::ForwardKL;
    double temperature = 1.0;          ///< τ > 0, divides both logit rows
    bool temperature_squared = false;  ///< multiply value and gradient by τ² (Hinton)
    double beta = 0.5;                 ///< JSD β ∈ [0, 1] (TRL/Liger convention)
    double alpha = 0.1;                ///< skew α ∈ [0, 1] (DistiLLM)
    /// Advanced: the fast path's tuning (tests, benchmarks); the defaults are the tuned ones.
    FastPathTuning tuning{};
    /// Advanced, optional: where the fast path counts what it did (null: nowhere).
    FastPathStats* stats = nullptr;

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

/// The least temperature the vocabulary losses accept. Below it the softmax of z/τ is one-hot
/// for any logit gaps of ordinary size, and gradients formed as q_j (h_j − Σ q h)/τ with
/// h ~ Δz/τ carry an absolute error of about ε·(Δz/τ)/τ that no longer resolves them (float
/// reverse KL at τ = 1e−6: entries of 1e4 where the exact gradient is 0; inf at 1e−30, NaN
/// once 1/τ overflows). τ is a softening knob (0.5–10 in practice); 1e−4 leaves four orders
/// of magnitude of margin. Huge temperatures are accepted (every row tends to uniform).
inline constexpr double kMinTemperature = 1e-4;

/// τ must be finite and ≥ `kMinTemperature` (rlpo::invalid_argument otherwise).
inline void check_temperature(const char* fn, double tau) {
    RLPO_CHECK(std::isfinite(tau) && tau >= kMinTemperature, fn,
               "temperature: must be > 0, finite and >= ", kMinTemperature,
               " (below it the softmax gradients lose every digit), given ", tau);
}

/// A loss scale formed from the options (τ² of `temperature_squared`, NKD's γτ²) must be
/// finite: τ = 1e200 is inside τ's range, but τ² overflows (rlpo::numerical_error).
inline void check_scale(const char* fn, const char* name, double scale) {
    if (!std::isfinite(scale))
        ::rlpo::detail::fail_numerical(fn, name, ": the loss scale it gives (", scale,
                                       ", e.g. temperature^2) overflows");
}

/// The loss scale of the `temperature_squared` switch: τ² when set, else 1 (checked finite).
inline double temperature_scale(const char* fn, double tau, bool squared) {
    const double t2 = squared ? tau * tau : 1.0;
    check_scale(fn, "temperature", t2);
    return t2;
}

/// Check the options; returns the loss scale (`temperature_scale`).
inline double validate(const char* fn, const DistillOptions& o) {
    check_temperature(fn, o.temperature);
    RLPO_CHECK(o.beta >= 0 && o.beta <= 1, fn, "beta: must be in [0, 1], given ", o.beta);
    RLPO_CHECK(o.alpha >= 0 && o.alpha <= 1, fn, "alpha: must be in [0, 1], given ", o.alpha);
    return temperature_scale(fn, o.temperature, o.temperature_squared);
}

}  // namespace detail

}  // namespace rlpo::distill
