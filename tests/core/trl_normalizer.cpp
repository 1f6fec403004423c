// TRL's loss types by name: parse_aggregation's modes and trl_normalizer's counts, checked
// against TRL's divisors written here from GRPOTrainer._compute_loss (trl/trainer/
// grpo_trainer.py), including empty rows, B·max_completion_length, global token counts,
// gradient accumulation and several processes.
#include "support/catch.hpp"
#include "support/checks.hpp"

#include <rlpo/core/aggregation.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

using rlpo::Aggregation;
using rlpo::Index;
using rlpo::Mat;
namespace rt = rlpo::testing;

namespace {
const char* const trl_names[] = {"grpo",  "bnpo", "dr_grpo", "dapo",
                                 "cispo", "sapo", "luspo",   "vespo"};

/// TRL's `loss` for one micro-batch, written from `_compute_loss` with torch's semantics:
/// `L` is per_token_loss (B, T), `m` the mask; `ga` current_gradient_accumulation_steps,
/// `items` num_items_in_batch, `procs` num_processes, `max_len` max_completion_length. For
/// luspo, L holds the (row-constant) sequence loss broadcast over T.
double trl_loss(const std::string& type, const Mat<double>& L, const Mat<double>& m, double ga,
                double items, double procs, double max_len) {
    const Index B = L.rows();
    const auto masked_row_sum = [&](Index i) {
        double s = 0;
        for (Index t = 0; t < L.cols(); ++t)
            if (m(i, t) != 0) s += L(i, t) * m(i, t);
        return s;
    };
    double total = 0;
    if (type == "grpo" || type == "sapo") {  // ((L·m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
        for (Index i = 0; i < B; ++i) total += masked_row_sum(i) / std::max(m.row(i).sum(), 1.0);
        return total / static_cast<double>(B) / ga;
    }
    for (Index i = 0; i < B; ++i) total += masked_row_sum(i);
    if (type == "bnpo") return total / std::max(m.sum(), 1.0) / ga;
    if (type == "dr_grpo") return total / (static_cast<double>(B) * max_len) / ga;
    if (type == "cispo" || type == "dapo" || type == "vespo")
        return total / (std::max(items, 1.0) / procs);
    if (type == "luspo") {  // (seq_loss · m.sum(1)).mean(): seq_loss = the row's loss value
        double s = 0;
        for (Index i = 0; i < B; ++i) {
            Index t0 = 0;
            while (t0 < L.cols() && m(i, t0) == 0) ++t0;
            if (t0 < L.cols()) s += L(i, t0) * m.row(i).sum();
        }
        return s / static_cast<double>(B) / ga;
    }
    throw std::logic_error("no TRL formula for " + type);
}

struct MicroBatches {
    Mat<double> L, m;
    std::vector<std::pair<Index, Index>> chunks;  // (first row, rows) of each micro-batch
};

/// A batch of 8 rows with empty rows and fractional-free 0/1 masks; row-constant losses for
/// luspo. Split into two micro-batches of 4 rows (TRL's accumulation keeps B fixed).
MicroBatches batch(std::uint64_t seed, bool row_constant) {
    rt::Generator gen(seed);
    MicroBatches b;
    b.L = gen.normal(8, 7);
    b.m = gen.mask(8, 7, 1, true);
    b.m.row(2).setZero();
    b.m.row(5).setZero();
    b.L(2, 1) = std::numeric_limits<double>::quiet_NaN();  // masked: never read
    if (row_constant)
        for (Index i = 0; i < 8; ++i) b.L.row(i).setConstant(b.L(i, 6));
    b.chunks = {{0, 4}, {4, 4}};
    return b;
}
}  // namespace

TEST_CASE("trl_normalizer: every TRL loss type gives TRL's divisor", "[core][trl]") {
    for (const char* name : trl_names) {
        INFO(name);
        const bool luspo = std::string(name) == "luspo";
        for (std::uint64_t seed = 1; seed <= 4; ++seed) {
            const MicroBatches b = batch(seed, luspo);
            const double max_len = 12.0;
            // one call on the whole batch: one micro-batch, one process
            rlpo::TRLNormalizerOptions o;
            o.max_completion_length = max_len;
            const double whole = rlpo::aggregate(b.L, b.m, rlpo::trl_normalizer(name, b.m, o));
            CHECK(whole == Approx(trl_loss(name, b.L, b.m, 1, b.m.sum(), 1, max_len))
                               .epsilon(1e-13)
                               .margin(1e-15));
            // two accumulated micro-batches on one of two processes: TRL's num_items_in_batch
            // is the step's global count (here this rank's plus 30 tokens on the other rank)
            o.gradient_accumulation_steps = 2;
            o.num_processes = 2;
            o.num_items_in_batch = b.m.sum() + 30.0;
            for (const auto& [r0, nr] : b.chunks) {
                const Mat<double> L = b.L.middleRows(r0, nr), m = b.m.middleRows(r0, nr);
                const double mine = rlpo::aggregate(L, m, rlpo::trl_normalizer(name, m, o));
                CHECK(mine == Approx(trl_loss(name, L, m, 2, *o.num_items_in_batch, 2, max_len))
                                  .epsilon(1e-13)
                                  .margin(1e-15));
            }
        }
    }
}

TEST_CASE("trl_normalizer: the counts themselves", "[core][trl]") {
    Mat<double> m = Mat<double>::Ones(4, 5);
    m.row(1).setZero();  // an empty row still counts in B
    m(3, 4) = 0;
    rlpo::TRLNormalizerOptions o;
    o.max_completion_length = 64;
    const auto grpo = rlpo::trl_normalizer("grpo", m, o);
    CHECK(grpo.mode == Aggregation::SeqMeanTokenMean);
    CHECK(*grpo.num_seqs == 4.0);
    const auto dr = rlpo::trl_normalizer("dr_grpo", m, o);
    CHECK(dr.mode == Aggregation::SeqMeanTokenSumNorm);
    CHECK(*dr.num_seqs == 4.0);
    CHECK(*dr.norm_constant == 64.0);
    CHECK(dr.sum_norm_seq_mean);
    const auto bnpo = rlpo::trl_normalizer("bnpo", m, o);
    CHECK(bnpo.mode == Aggregation::TokenMean);
    CHECK(*bnpo.num_tokens == 14.0);
    const auto luspo = rlpo::trl_normalizer("luspo", m, o);
    CHECK(luspo.mode == Aggregation::SeqMeanTokenSum);
    CHECK(*luspo.num_seqs == 4.0);
    o.num_items_in_batch = 100;
    o.num_processes = 4;
    for (const char* name : {"dapo", "cispo", "vespo"}) {
        const auto n = rlpo::trl_normalizer(name, m, o);
        CHECK(n.mode == Aggregation::TokenMean);
        CHECK(*n.num_tokens == 25.0);
    }
    o.num_items_in_batch.reset();  // the local count as the whole step: 14·1·4 / 4
    CHECK(*rlpo::trl_normalizer("dapo", m, o).num_tokens == 14.0);
    // an empty mask: TRL's clamp(min=1); every term is 0
    const Mat<double> none = Mat<double>::Zero(3, 5), L = Mat<double>::Ones(3, 5);
    for (const char* name : trl_names) {
        INFO(name);
        CHECK(rlpo::aggregate(L, none, rlpo::trl_normalizer(name, none)) == 0.0);
    }
}

TEST_CASE("parse_aggregation: all eight TRL names map to their mode", "[core][trl]") {
    CHECK(rlpo::parse_aggregation("grpo") == Aggregation::SeqMeanTokenMean);
    CHECK(rlpo::parse_aggregation("sapo") == Aggregation::SeqMeanTokenMean);
    CHECK(rlpo::parse_aggregation("bnpo") == Aggregation::TokenMean);
    CHECK(rlpo::parse_aggregation("dapo") == Aggregation::TokenMean);
    CHECK(rlpo::parse_aggregation("cispo") == Aggregation::TokenMean);
    CHECK(rlpo::parse_aggregation("vespo") == Aggregation::TokenMean);
    CHECK(rlpo::parse_aggregation("dr_grpo") == Aggregation::SeqMeanTokenSumNorm);
    CHECK(rlpo::parse_aggregation("luspo") == Aggregation::SeqMeanTokenSum);
    Mat<double> m = Mat<double>::Ones(2, 3);
    for (const char* name : trl_names)
        CHECK(rlpo::parse_aggregation(name) == rlpo::trl_normalizer(name, m).mode);
}

TEST_CASE("trl_normalizer: bad input gives the documented error", "[core][trl][bad-input]") {
    const Mat<double> m = Mat<double>::Ones(2, 3);
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::trl_normalizer("token-mean", m),
                                    "trl_normalizer(): name: unknown TRL loss_type 'token-mean'; "
                                    "valid names: grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, "
                                    "vespo");
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::parse_aggregation("gspo"),
                                    "valid names: token-mean, token-sum");
    rlpo::TRLNormalizerOptions o;
    o.max_completion_length = 0;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::trl_normalizer("dr_grpo", m, o),
                                    "TRLNormalizerOptions::max_completion_length: must be > 0");
    o = {};
    o.num_processes = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::trl_normalizer("dapo", m, o),
                                    "TRLNormalizerOptions::num_processes: must be > 0");
    o = {};
    o.gradient_accumulation_steps = std::numeric_limits<double>::infinity();
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::trl_normalizer("grpo", m, o),
                                    "gradient_accumulation_steps: must be > 0");
    o = {};
    o.num_items_in_batch = -3;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::trl_normalizer("dapo", m, o),
                                    "TRLNormalizerOptions::num_items_in_batch: must be >= 0");
    Mat<double> bad = m;
    bad(0, 1) = -1;
    RLPO_REQUIRE_THROWS_WITH_SUBSTR(rlpo::trl_normalizer("grpo", bad), "trl_normalizer(): mask");
}
