#pragma once
/// \file
/// The reductions interface the batch-level functions take when a mini-batch is sharded over
/// data-parallel ranks: four collective operations on a few doubles.
///
/// | operation | result on every rank |
/// |---|---|
/// | `sum(x, n)` | x_k ← Σ_r x_k^(r), the terms added in rank order 0, 1, …, P − 1 |
/// | `max(x, n)`, `min(x, n)` | x_k ← max_r / min_r x_k^(r) |
/// | `gather(v)` | every rank's vector, in rank order (allgatherv; sizes may differ) |
///
/// Every rank calls every operation the same number of times, in the same order, with the
/// same n (collective semantics, as MPI's). The results must be bitwise identical on every rank:
/// sums are added in rank order (not a tree of unknown shape), so a sum over ranks is as
/// deterministic as the single-process loop it replaces — the same inputs and rank count always
/// give the same bits. `LocalReductions` (one process: every operation is the identity, no
/// cost) is the default of every function that takes reductions; `MpiReductions`
/// (<rlpo/dist/mpi.hpp>, target `rlpo::mpi`) runs them over an MPI communicator. Another engine
/// (NCCL, torch.distributed, gloo) plugs in by deriving from `Reductions` and implementing
/// `rank`, `size`, `sum`, `max`, `min` and `gather` (tests/dist/ has a simulated N-rank one).
///
/// **Layout rule** of every function that takes reductions: rank r holds a contiguous block of
/// rows (responses) of the global mini-batch, the blocks in rank order (rank 0 the first rows);
/// block sizes may differ and may be 0. Functions over groups also need whole groups per rank
/// (dist/advantages.hpp). Under this rule each function equals one call on the whole batch, up
/// to the rounding of sums taken in another order (tested to 1e-12 relative in double).
///
/// **Errors and collectives**: a function validates its local inputs before its first
/// collective; a rank whose input is invalid throws and does not take part in the reductions,
/// so the other ranks wait in theirs. Treat an rlpo exception on one rank as fatal for the job
/// (e.g. `MPI_Abort`). Errors that depend on other ranks' data (a group split across ranks) are
/// detected from gathered data, identically on every rank, so every rank throws.

#include <cstddef>
#include <vector>

namespace rlpo::dist {

/// Collective operations on doubles over the ranks of a data-parallel group (see the file
/// comment for the semantics every implementation must keep).
class Reductions {
public:
    virtual ~Reductions() = default;
    /// This process's rank in [0, size()).
    virtual int rank() const = 0;
    /// The number of ranks (≥ 1).
    virtual int size() const = 0;
    /// x[k] ← Σ over ranks of x[k], added in rank order; n may be 0 (a no-op that still counts
    /// as a collective call).
    virtual void sum(double* x, std::size_t n) const = 0;
    /// x[k] ← max over ranks of x[k].
    virtual void max(double* x, std::size_t n) const = 0;
    /// x[k] ← min over ranks of x[k].
    virtual void min(double* x, std::size_t n) const = 0;
    /// Every rank's `local`, in rank order (sizes may differ between ranks).
    virtual std::vector<std::vector<double>> gather(const std::vector<double>& local) const = 0;

    /// Conveniences over the four operations.
    double sum(double x) const {
        sum(&x, 1);
        return x;
    }
    std::vector<double> sum(std::vector<double> x) const {
        sum(x.data(), x.size());
        return x;
    }
    double max(double x) const {
        max(&x, 1);
        return x;
    }
    double min(double x) const {
        min(&x, 1);
        return x;
    }
    /// True when this is a single process (size() == 1): functions may skip their reductions.
    bool local() const { return size() == 1; }
};

/// One process: every operation is the identity (the default of every function that takes
/// reductions).
class LocalReductions final : public Reductions {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void sum(double*, std::size_t) const override {}
    void max(double*, std::size_t) const override {}
    void min(double*, std::size_t) const override {}
    std::vector<std::vector<double>> gather(const std::vector<double>& local) const override {
        return {local};
    }
    using Reductions::max;
    using Reductions::min;
    using Reductions::sum;
};

/// The shared `LocalReductions` instance (the default argument).
inline const Reductions& local() {
    static const LocalReductions instance;
    return instance;
}

/// Sums built from `gather`: x[k] ← Σ_r x[k]^(r) in rank order, identical on every rank. What
/// an implementation whose native all-reduce adds in an unspecified order can use for `sum`
/// (MpiReductions does). `gathered` holds each rank's n values.
inline void add_in_rank_order(const std::vector<std::vector<double>>& gathered, double* x,
                              std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) {
        double s = 0.0;
        for (const auto& part : gathered) s += part[k];
        x[k] = s;
    }
}

}  // namespace rlpo::dist
