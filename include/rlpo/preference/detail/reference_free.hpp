#pragma once
/// \file
/// Shared pieces of the reference-free preference losses (CPO / SimPO / AlphaPO, ORPO;
/// internal): reading the summed policy log-probs and the completion lengths, the NLL term on
/// the chosen completions, and TRL's pair metrics.
///
/// The NLL term is TRL's `nn.CrossEntropyLoss()` over every chosen completion token of the
/// batch, a token mean: NLL = −Σ_i π_c,i / N with π_c,i the summed log-prob of chosen completion
/// i and N = Σ_i |y_c,i| (or the caller's global token count). Its gradient is −1/N for every
/// chosen sequence sum (−1/N per token).

#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/pairs.hpp>
#include <rlpo/preference/lengths.hpp>

#include <optional>
#include <tuple>
#include <vector>

namespace rlpo::preference::detail {

/// The data of one call of a reference-free loss, in double.
struct SeqPairs {
    std::vector<double> pc, pr;        ///< summed log-probs of the chosen / rejected completions
    std::vector<double> len_c, len_r;  ///< lengths as given (empty when not given)
    double chosen_tokens = 0.0;        ///< Σ_i |y_c,i| (0 without lengths)
    std::size_t size() const { return pc.size(); }
    /// |y| clamped ≥ 1 (1 without lengths).
    double clen(std::size_t i) const { return len_c.empty() ? 1.0 : std::max(len_c[i], 1.0); }
    double rlen(std::size_t i) const { return len_r.empty() ? 1.0 : std::max(len_r[i], 1.0); }
};

/// Read the two `[B]` policy inputs and (when given) the lengths: sizes, finiteness, lengths ≥ 0.
template <class D1, class D2>
SeqPairs read_seq_pairs(const char* fn, const Eigen::MatrixBase<D1>& chosen,
                        const Eigen::MatrixBase<D2>& rejected,
                        const std::optional<CompletionLengths>& lengths) {
    SeqPairs d;
    d.pc = read_pairs(fn, "policy_chosen_logps", chosen, -1, "");
    const Index B = static_cast<Index>(d.pc.size());
    d.pr = read_pairs(fn, "policy_rejected_logps", rejected, B, "policy_chosen_logps");
    std::tie(d.len_c, d.len_r) = read_lengths(fn, lengths, B);
    for (const double l : d.len_c) d.chosen_tokens += l;
    return d;
}

/// The chosen completions' NLL term −Σ_i log π(y_c,i) / N of CPO and ORPO: N is the given
/// count of chosen tokens (a global count for micro-batches) or Σ_i |y_c,i|; the term is on
/// when asked for and N > 0. `sum_c` = Σ_i log π(y_c,i).
struct NllTerm {
    double N = 0.0, sum_c = 0.0, value = 0.0;
    bool on = false;
    NllTerm(const SeqPairs& d, const std::optional<double>& num_tokens, bool wanted)
        : N(num_tokens ? *num_tokens : d.chosen_tokens) {
        for (double v : d.pc) sum_c += v;
        on = wanted && N > 0;
        value = on ? -sum_c / N : 0.0;
    }
};

/// TRL's pair metrics from the rewards β·r and the log-probs x the loss reads (means over B).
inline void add_pair_metrics(Metrics& m, const std::vector<double>& reward_c,
                             const std::vector<double>& reward_r, const std::vector<double>& xc,
                             const std::vector<double>& xr) {
    double rc = 0, rr = 0, acc = 0, lc = 0, lr = 0;
    for (std::size_t i = 0; i < xc.size(); ++i) {
        rc += reward_c[i];
        rr += reward_r[i];
        acc += reward_c[i] > reward_r[i] ? 1.0 : 0.0;
        lc += xc[i];
        lr += xr[i];
    }
    const double nb = static_cast<double>(xc.size());
    m.add("rewards/chosen", rc, nb);
    m.add("rewards/rejected", rr, nb);
    m.add("rewards/accuracies", acc, nb);
    m.add("rewards/margins", rc - rr, nb);
    m.add("logps/chosen", lc, nb);
    m.add("logps/rejected", lr, nb);
}

}  // namespace rlpo::preference::detail
