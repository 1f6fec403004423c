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
/// number of rows B including empty ones: pass `num_seqs = B` to reproduce it, or let
/// `trl_normalizer(loss_type, mask, …)` set every count of a TRL loss type.
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

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
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
    {"sapo", Aggregation::SeqMeanTokenMean},
    {"cispo", Aggregation::TokenMean},
    {"vespo", Aggregation::TokenMean},
    {"luspo", Aggregation::SeqMeanTokenSum},
};
inline constexpr NameTable aggregation_table{aggregation_names};

/// TRL's GRPOTrainer loss types (GRPOConfig `loss_type`), as `trl_normalizer` accepts them.
inline constexpr NameRow<Aggregation> trl_loss_type_names[] = {
    {"grpo", Aggregation::SeqMeanTokenMean},
    {"bnpo", Aggregation::TokenMean},
    {"dr_grpo", Aggregation::SeqMeanTokenSumNorm},
    {"dapo", Aggregation::TokenMean},
    {"cispo", Aggregation::TokenMean},
    {"sapo", Aggregation::SeqMeanTokenMean},
    {"luspo", Aggregation::SeqMeanTokenSum},
    {"vespo", Aggregation::TokenMean},
};
inline constexpr NameTable trl_loss_type_table{trl_loss_type_names};
}  // namespace detail

/// Canonical name of a mode, as verl spells it.
inline const char* to_string(Aggregation a) { return detail::aggregation_table.name_of(a); }

/// Parse verl names (`token-mean`, …) and TRL's eight loss types to the *mode* of their
/// normaliser: `grpo`, `sapo` → seq-mean-token-mean; `bnpo`, `dapo`, `cispo`, `vespo` →
/// token-mean; `dr_grpo` → seq-mean-token-sum-norm; `luspo` → seq-mean-token-sum. Unknown names
/// throw with the list of valid names. The mode alone does not reproduce TRL's numbers: its
/// counts do (B rows including empty ones, B·max_completion_length, the global token count);
/// `trl_normalizer` below builds the whole Normalizer from a TRL loss type.
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
    /// The row's extent: every mask entry of row i at t ≥ end[i] is 0 (0 for an empty row).
    /// At least one past the row's last entry > 0; a fast builder may round it up to its block
    /// (`row_weights_fast`: 32 entries). Token passes read no input at or past it: a padded
    /// row's tail costs only its gradient's zeros.
    std::vector<Index> end;
};

namespace detail {
/// The factors from the rows' lengths w.len (and extents w.end) already in `w`, for a mask of
/// `cols` columns: the local counts (rows added in row order), the normalizer's checks, c_i.
inline void finish_row_weights(const char* function, RowWeights& w, Index cols,
                               const Normalizer& norm) {
    w.c.assign(w.len.size(), 0.0);
    w.local_tokens = 0.0;
    w.local_seqs = 0.0;
    for (const double s : w.len) {
        w.local_tokens += s;
        w.local_seqs += s > 0 ? 1.0 : 0.0;
    }
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
    const double C = norm.norm_constant.value_or(static_cast<double>(cols));
    for (std::size_t k = 0; k < w.len.size(); ++k) {
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
}
}  // namespace detail

/// Build the row factors for `mask` under `norm`, validating the mask (finite, ≥ 0) and the
/// normalizer (supplied counts > 0, C > 0) on the way. One pass over the mask.
template <class Derived>
inline RowWeights row_weights(const char* function, const Eigen::MatrixBase<Derived>& mask,
                              const Normalizer& norm) {
    const auto& m = mask.derived();
    RowWeights w;
    const Index B = m.rows();
    w.len.assign(static_cast<std::size_t>(B), 0.0);
    w.end.assign(static_cast<std::size_t>(B), 0);
    bool bad = false;
    for (Index i = 0; i < B; ++i) {
        double s = 0.0;
        Index e = 0;
        for (Index t = 0; t < m.cols(); ++t) {
            const double v = static_cast<double>(m(i, t));
            bad |= !(v >= 0.0 && v < std::numeric_limits<double>::infinity());
            s += v;
            if (v != 0.0) e = t + 1;
        }
        w.len[static_cast<std::size_t>(i)] = s;
        w.end[static_cast<std::size_t>(i)] = e;
    }
    if (bad) detail::check_mask(function, m);
    detail::finish_row_weights(function, w, m.cols(), norm);
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

/// What `trl_normalizer` needs besides the mask: the GRPOConfig / trainer values that enter
/// TRL's divisors.
struct TRLNormalizerOptions {
    /// GRPOConfig `max_completion_length` (default 512): dr_grpo's constant.
    double max_completion_length = 512.0;
    /// The trainer's `num_items_in_batch`: Σ mask over the whole optimizer step, all micro-batches
    /// and all processes (cispo / dapo / vespo). Unset ⇒ the local Σ mask × accumulation steps ×
    /// processes (right when every micro-batch holds as many tokens as this one).
    std::optional<double> num_items_in_batch{};
    /// `accelerator.num_processes`: cispo / dapo / vespo divide num_items_in_batch by it.
    double num_processes = 1.0;
    /// `current_gradient_accumulation_steps`: every other loss type divides by it.
    double gradient_accumulation_steps = 1.0;
};

/// The Normalizer that reproduces TRL's GRPOTrainer (`_compute_loss`, trl/trainer/grpo_trainer.py)
/// for `loss_type` on a micro-batch with this `mask` (B = mask.rows() rows): rlpo's value equals
/// the `loss` TRL returns for the micro-batch, so the gradients add up as TRL's do.
///
/// | loss_type              | TRL's loss                                     | Normalizer                        |
/// |------------------------|------------------------------------------------|-----------------------------------|
/// | grpo, sapo             | mean over all B rows of Σ_t mL / max(|y_i|, 1), / GA | SeqMeanTokenMean, N_seq = B·GA |
/// | bnpo                   | Σ mL / max(Σ m, 1), / GA                        | TokenMean, N_tok = max(Σ m, 1)·GA |
/// | dr_grpo                | Σ mL / (B · max_completion_length), / GA        | SeqMeanTokenSumNorm, N_seq = B·GA, C = max_completion_length |
/// | cispo, dapo, vespo     | Σ mL / (max(num_items_in_batch, 1) / P)         | TokenMean, N_tok = max(num_items, 1) / P |
/// | luspo                  | mean over all B rows of ℓ_i·|y_i|, / GA          | SeqMeanTokenSum, N_seq = B·GA     |
///
/// (GA = gradient_accumulation_steps, P = num_processes.) Empty rows count in B, as in TRL; a
/// row contributes 0 either way. The surrogates that force a mode (LUSPO: seq-mean-token-sum)
/// keep these counts. An empty mask (B = 0 or Σ m = 0) gives value 0.
///
/// **Bad input**: an unknown loss_type → rlpo::invalid_argument listing TRL's eight names;
/// max_completion_length, num_processes or gradient_accumulation_steps ≤ 0 or non-finite,
/// num_items_in_batch < 0 or non-finite, or an invalid mask → rlpo::invalid_argument.
template <class D>
inline Normalizer trl_normalizer(const std::string& loss_type, const Eigen::MatrixBase<D>& mask,
                                 const TRLNormalizerOptions& o = {}) {
    const char* fn = "trl_normalizer";
    const Aggregation mode = detail::trl_loss_type_table.parse(fn, "TRL loss_type", loss_type);
    const std::pair<const char*, double> positive[] = {
        {"max_completion_length", o.max_completion_length},
        {"num_processes", o.num_processes},
        {"gradient_accumulation_steps", o.gradient_accumulation_steps}};
    for (const auto& p : positive)
        RLPO_CHECK(p.second > 0 && std::isfinite(p.second), fn, "TRLNormalizerOptions::", p.first,
                   ": must be > 0, given ", p.second);
    if (o.num_items_in_batch)
        RLPO_CHECK(*o.num_items_in_batch >= 0 && std::isfinite(*o.num_items_in_batch), fn,
                   "TRLNormalizerOptions::num_items_in_batch: must be >= 0, given ",
                   *o.num_items_in_batch);
    const RowWeights w = row_weights(fn, mask, Normalizer{});
    const double B = static_cast<double>(mask.rows()), GA = o.gradient_accumulation_steps;
    const double rows = std::max(B, 1.0) * GA;  // B = 0: any positive count (nothing to divide)
    Normalizer n;
    n.mode = mode;
    const bool global_tokens = loss_type == "cispo" || loss_type == "dapo" || loss_type == "vespo";
    if (global_tokens) {
        const double items = o.num_items_in_batch.value_or(w.local_tokens * GA * o.num_processes);
        n.num_tokens = std::max(items, 1.0) / o.num_processes;
    } else if (mode == Aggregation::TokenMean) {  // bnpo: the local count
        n.num_tokens = std::max(w.local_tokens, 1.0) * GA;
    } else {
        n.num_seqs = rows;
    }
    if (mode == Aggregation::SeqMeanTokenSumNorm) n.norm_constant = o.max_completion_length;
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
