#pragma once
/// \file
/// How per-token losses L_it become one number, with denominators that may come from outside.
///
/// Every mode is a weighted sum Σ_it c_i · m_it · L_it with a per-row factor c_i:
///
/// | mode                    | c_i                          | verl / TRL name                    |
/// |-------------------------|------------------------------|------------------------------------|
/// | TokenMean               | 1 / N_tok                    | token-mean; TRL bnpo (local), dapo |
/// | TokenSum                | 1                            | (token-sum)                        |
/// | SeqMeanTokenSum         | 1 / N_seq                    | seq-mean-token-sum                 |
/// | SeqMeanTokenMean        | 1 / (|y_i| · N_seq)          | seq-mean-token-mean; TRL grpo      |
/// | SeqMeanTokenSumNorm     | 1 / (N_seq · C)              | seq-mean-token-sum-norm; TRL dr_grpo |
///
/// where m is the mask (entries ≥ 0; 0 excludes a token entirely), |y_i| = Σ_t m_it,
/// N_tok = Σ_it m_it and N_seq = the number of rows with |y_i| > 0 — unless the caller supplies
/// `num_tokens` / `num_seqs`: the global counts of the whole mini-batch (over micro-batches and
/// data-parallel ranks). With global counts supplied, the values and gradients of the
/// micro-batches sum exactly to those of one call on the whole batch. Rows are never split, so
/// |y_i| is always local. A row with |y_i| = 0 contributes 0 in every mode. C defaults to T, the
/// number of columns (verl's default loss_scale_factor); Dr.GRPO / TRL use the maximum
/// completion length, which callers pass as `norm_constant`. TRL's dr_grpo divides by the
/// number of rows B including empty ones: pass `num_seqs = B` to reproduce it.
///
/// An empty mask (N_tok = 0) gives value 0 and gradient 0 in every mode (documented
/// degenerate case, never a NaN).
///
/// **verl's own arithmetic** (`Normalizer::verl(mode)`): verl's `agg_loss` divides each row by
/// |y_i| + 1e-8 in seq-mean-token-mean (`length_epsilon`), divides seq-mean-token-sum-norm by C
/// only, without the mean over sequences (`sum_norm_seq_mean = false`), and its `masked_mean`
/// adds 1e-8 to the token count of every logged mean (`count_epsilon`, applied by the
/// objectives to their mean metrics: value = sum / (count + ε)). rlpo's defaults are the exact
/// divisions and Dr. GRPO's / TRL's dr_grpo mean over sequences; the verl preset reproduces
/// verl's numbers to rounding (`verl/trainer/ppo/core_algos.py` `agg_loss`,
/// `verl/utils/torch_functional.py` `masked_mean`).

#include <rlpo/core/error.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/types.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace rlpo {

enum class Aggregation {
    TokenMean,
    TokenSum,
    SeqMeanTokenSum,
    SeqMeanTokenMean,
    SeqMeanTokenSumNorm
};

/// The aggregation mode and its (optionally external) denominators.
struct Normalizer {
    Aggregation mode = Aggregation::TokenMean;
    /// Global Σ m over the mini-batch (TokenMean). Unset ⇒ the local Σ m.
    std::optional<double> num_tokens{};
    /// Global number of non-empty sequences (Seq* modes). Unset ⇒ the local count.
    std::optional<double> num_seqs{};
    /// C of SeqMeanTokenSumNorm. Unset ⇒ T (the number of columns).
    std::optional<double> norm_constant{};
    /// ε added to |y_i| in SeqMeanTokenMean's factor 1 / ((|y_i| + ε)·N_seq) (verl: 1e-8).
    double length_epsilon = 0.0;
    /// ε added to the count of every mean metric: value = sum / (count + ε) (verl: 1e-8).
    double count_epsilon = 0.0;
    /// SeqMeanTokenSumNorm divides by N_seq·C (true: Dr. GRPO, TRL dr_grpo) or by C (verl).
    bool sum_norm_seq_mean = true;

    /// verl's arithmetic for `mode` (see the file comment).
    static Normalizer verl(Aggregation mode = Aggregation::TokenMean) {
        Normalizer n;
        n.mode = mode;
        n.length_epsilon = 1e-8;
        n.count_epsilon = 1e-8;
        n.sum_norm_seq_mean = false;
        return n;
    }
};

namespace detail {
/// Every accepted spelling; the first row of a mode is its canonical (verl) name.
inline constexpr NameRow<Aggregation> aggregation_names[] = {
    {"token-mean", Aggregation::TokenMean},
    {"token-sum", Aggregation::TokenSum},
    {"seq-mean-token-sum", Aggregation::SeqMeanTokenSum},
    {"seq-mean-token-mean", Aggregation::SeqMeanTokenMean},
    {"seq-mean-token-sum-norm", Aggregation::SeqMeanTokenSumNorm},
    {"grpo", Aggregation::SeqMeanTokenMean},
    {"bnpo", Aggregation::TokenMean},
    {"dapo", Aggregation::TokenMean},
    {"dr_grpo", Aggregation::SeqMeanTokenSumNorm},
};
inline constexpr NameTable aggregation_table{aggregation_names};
}  // namespace detail

/// Canonical name of a mode, as verl spells it.
inline const char* to_string(Aggregation a) { return detail::aggregation_table.name_of(a); }

/// Parse verl names (`token-mean`, …) and TRL loss types (`grpo` → seq-mean-token-mean,
/// `bnpo` / `dapo` → token-mean, `dr_grpo` → seq-mean-token-sum-norm). Unknown names throw
/// with the list of valid names. (`bnpo` and `dapo` differ only in whether N_tok is local or
/// global, which is the Normalizer's `num_tokens`, not the mode.)
inline Aggregation parse_aggregation(const std::string& name) {
    return detail::aggregation_table.parse("parse_aggregation", "aggregation", name);
}

/// Per-row aggregation factors and the local counts they were built from.
struct RowWeights {
    std::vector<double> c;      ///< c_i of the table above (0 for empty rows)
    std::vector<double> len;    ///< |y_i| = Σ_t m_it
    double local_tokens = 0.0;  ///< Σ m
    double local_seqs = 0.0;    ///< rows with |y_i| > 0
    double tokens = 0.0;        ///< N_tok used (global if supplied)
    double seqs = 0.0;          ///< N_seq used (global if supplied)
};

/// Build the row factors for `mask` under `norm`, validating the mask (finite, ≥ 0) and the
/// normalizer (supplied counts > 0, C > 0) on the way. One pass over the mask.
template <class Derived>
inline RowWeights row_weights(const char* function, const Eigen::MatrixBase<Derived>& mask,
                              const Normalizer& norm) {
    const auto& m = mask.derived();
    RowWeights w;
    const Index B = m.rows();
    w.c.assign(static_cast<std::size_t>(B), 0.0);
    w.len.assign(static_cast<std::size_t>(B), 0.0);
    bool bad = false;
    for (Index i = 0; i < B; ++i) {
        double s = 0.0;
        for (Index t = 0; t < m.cols(); ++t) {
            const double v = static_cast<double>(m(i, t));
            bad |= !(v >= 0.0 && v < std::numeric_limits<double>::infinity());
            s += v;
        }
        w.len[static_cast<std::size_t>(i)] = s;
        w.local_tokens += s;
        w.local_seqs += s > 0 ? 1.0 : 0.0;
    }
    if (bad) detail::check_mask(function, m);
    if (norm.num_tokens)
        RLPO_CHECK(*norm.num_tokens > 0 && std::isfinite(*norm.num_tokens), function,
                   "Normalizer::num_tokens: must be > 0, given ", *norm.num_tokens);
    if (norm.num_seqs)
        RLPO_CHECK(*norm.num_seqs > 0 && std::isfinite(*norm.num_seqs), function,
                   "Normalizer::num_seqs: must be > 0, given ", *norm.num_seqs);
    if (norm.norm_constant)
        RLPO_CHECK(*norm.norm_constant > 0 && std::isfinite(*norm.norm_constant), function,
                   "Normalizer::norm_constant: must be > 0, given ", *norm.norm_constant);
    RLPO_CHECK(norm.length_epsilon >= 0 && std::isfinite(norm.length_epsilon), function,
               "Normalizer::length_epsilon: must be >= 0, given ", norm.length_epsilon);
    RLPO_CHECK(norm.count_epsilon >= 0 && std::isfinite(norm.count_epsilon), function,
               "Normalizer::count_epsilon: must be >= 0, given ", norm.count_epsilon);
    w.tokens = norm.num_tokens.value_or(w.local_tokens);
    w.seqs = norm.num_seqs.value_or(w.local_seqs);
    const double C = norm.norm_constant.value_or(static_cast<double>(m.cols()));
    for (Index i = 0; i < B; ++i) {
        const auto k = static_cast<std::size_t>(i);
        if (w.len[k] <= 0) continue;  // empty rows contribute 0 in every mode
        switch (norm.mode) {
            case Aggregation::TokenMean: w.c[k] = w.tokens > 0 ? 1.0 / w.tokens : 0.0; break;
            case Aggregation::TokenSum: w.c[k] = 1.0; break;
            case Aggregation::SeqMeanTokenSum: w.c[k] = w.seqs > 0 ? 1.0 / w.seqs : 0.0; break;
            case Aggregation::SeqMeanTokenMean:
                w.c[k] = w.seqs > 0 ? 1.0 / ((w.len[k] + norm.length_epsilon) * w.seqs) : 0.0;
                break;
            case Aggregation::SeqMeanTokenSumNorm:
                w.c[k] =
                    !norm.sum_norm_seq_mean ? 1.0 / C : (w.seqs > 0 ? 1.0 / (w.seqs * C) : 0.0);
                break;
        }
    }
    return w;
}

/// Aggregate a precomputed per-token loss matrix: Σ_it c_i m_it L_it. Masked entries of L are
/// never read (they may be NaN). Optionally writes ∂/∂L (= c_i m_it) to `grad_L`.
/// The global counts of a mini-batch mask (what each micro-batch / rank must be given). An
/// empty mask gives counts of 1 (every term is 0 then), so the normalizer stays valid.
template <class D>
inline Normalizer global_normalizer(const Eigen::MatrixBase<D>& mask, Aggregation mode,
                                    std::optional<double> norm_constant = {}) {
    const RowWeights w = row_weights("global_normalizer", mask, Normalizer{mode});
    Normalizer n;
    n.mode = mode;
    n.num_tokens = w.local_tokens > 0 ? w.local_tokens : 1.0;
    n.num_seqs = w.local_seqs > 0 ? w.local_seqs : 1.0;
    n.norm_constant = norm_constant;
    return n;
}

template <class DL, class DM>
inline double aggregate(const Eigen::MatrixBase<DL>& loss, const Eigen::MatrixBase<DM>& mask,
                        const Normalizer& norm = {}, Mat<detail::scalar_t<DL>>* grad_L = nullptr) {
    const char* fn = "aggregate";
    detail::check_same_shape(fn, "mask", mask.derived(), "loss", loss.derived());
    const RowWeights w = row_weights(fn, mask, norm);
    if (grad_L) grad_L->setZero(loss.rows(), loss.cols());
    double total = 0.0;
    for (Index i = 0; i < loss.rows(); ++i) {
        const double c = w.c[static_cast<std::size_t>(i)];
        double row = 0.0;
        for (Index t = 0; t < loss.cols(); ++t) {
            const double m = static_cast<double>(mask.derived()(i, t));
            if (m == 0) continue;
            row += m * static_cast<double>(loss.derived()(i, t));
            if (grad_L) (*grad_L)(i, t) = static_cast<detail::scalar_t<DL>>(c * m);
        }
        total += c * row;
    }
    return total;
}

}  // namespace rlpo
