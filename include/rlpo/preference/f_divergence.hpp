#pragma once
/// \file
/// f-DPO scores (TRL `f_divergence_type`): the function of the log-ratio u = logp − ref_logp
/// that a DPO-family loss reads in place of u, from the f-divergence regulariser f between
/// policy and reference (f'(e^u) up to an additive constant):
///
/// | TRL name           | `FDivergence` | s(u)                                   | ds/du         |
/// |--------------------|---------------|----------------------------------------|---------------|
/// | `reverse_kl`       | `ReverseKL`   | u (standard DPO; the default)          | 1             |
/// | `forward_kl`       | `ForwardKL`   | −e^{−u}                                | e^{−u}        |
/// | `js_divergence`    | `JS`          | log σ(u)                               | σ(−u)         |
/// | `alpha_divergence` | `Alpha`       | e^{min((α−1)u, 80)}/(α − 1); u if \|α − 1\| < 1e-6 | e^{(α−1)u}, 0 beyond the clamp |
///
/// α = `DPOOptions::f_alpha` (TRL `f_alpha_divergence_coef`, default 0.5). Paper: "Beyond
/// Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints"
/// (f-DPO, arXiv 2309.16240). Anchor: TRL main `DPOTrainer._compute_loss`; its clamp at 80 is the
/// float32/bfloat16 one (TRL has none for float64), applied here in double; beyond it the
/// derivative is 0, as torch.clamp's. TRL ≤ 0.24 had a different α form
/// ((e^{−αu_r} − e^{−αu_c})/α on the margin) and no forward KL; rlpo follows current TRL.

#include <rlpo/core/math.hpp>
#include <rlpo/core/names.hpp>

#include <cmath>
#include <string>
#include <utility>

namespace rlpo::preference {

/// The f-divergence regulariser of f-DPO (TRL `f_divergence_type`): the score f'(e^u) (up to a
/// constant) that replaces the log-ratio u in the loss types that read scores.
enum class FDivergence {
    ReverseKL,  ///< u (standard DPO)
    ForwardKL,  ///< −e^{−u}
    JS,         ///< log σ(u)
    Alpha       ///< e^{min((α−1)u, 80)}/(α − 1) (u when |α − 1| < 1e-6), α = `f_alpha`
};

namespace detail {

inline constexpr NameRow<FDivergence> f_divergence_names[] = {
    {"reverse_kl", FDivergence::ReverseKL},
    {"forward_kl", FDivergence::ForwardKL},
    {"js_divergence", FDivergence::JS},
    {"alpha_divergence", FDivergence::Alpha},
};
inline constexpr NameTable f_divergence_table{f_divergence_names};

/// The score of a log-ratio u and its derivative ds/du.
inline std::pair<double, double> f_score(double u, FDivergence f, double alpha) {
    switch (f) {
        case FDivergence::ReverseKL: break;
        case FDivergence::ForwardKL: {
            const double e = std::exp(-u);
            return {-e, e};
        }
        case FDivergence::JS: return {log_sigmoid(u), sigmoid(-u)};
        case FDivergence::Alpha: {
            if (std::abs(alpha - 1.0) < 1e-6) break;
            const double coef = 1.0 / (alpha - 1.0), t = (alpha - 1.0) * u;
            if (t > 80.0) return {std::exp(80.0) * coef, 0.0};
            const double e = std::exp(t);
            return {e * coef, e};
        }
    }
    return {u, 1.0};
}

}  // namespace detail

/// TRL's name of an f-divergence.
inline const char* to_string(FDivergence f) { return detail::f_divergence_table.name_of(f); }

/// Parse a TRL `f_divergence_type` name; unknown names throw listing every valid name.
inline FDivergence parse_f_divergence(const std::string& name) {
    return detail::f_divergence_table.parse("preference::parse_f_divergence", "f-divergence", name);
}

}  // namespace rlpo::preference
