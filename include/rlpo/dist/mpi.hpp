#pragma once
/// \file
/// `MpiReductions`: the reductions interface (dist/reductions.hpp) over an MPI communicator.
/// Include only in programs that link MPI (CMake: `target_link_libraries(app PRIVATE rlpo::mpi)`,
/// made when `find_package(MPI COMPONENTS CXX)` succeeds; Debian: `libopenmpi-dev`).
///
/// | operation | MPI calls |
/// |---|---|
/// | `sum` | `MPI_Allgather` of the n values of every rank, then added in rank order on every rank (deterministic, identical on all ranks, independent of the MPI library's reduction tree) |
/// | `max`, `min` | `MPI_Allreduce` with `MPI_MAX` / `MPI_MIN` (exact in any order) |
/// | `gather` | `MPI_Allgather` of the sizes, then `MPI_Allgatherv` |
///
/// All in `MPI_DOUBLE`. The communicator is borrowed (not duplicated, not freed): MPI must be
/// initialised before the first call and finalised after the last. MPI errors follow the
/// communicator's error handler (by default `MPI_ERRORS_ARE_FATAL`); with `MPI_ERRORS_RETURN`
/// a failing call throws std::runtime_error naming the MPI function.

#include <rlpo/dist/reductions.hpp>

// The C API only: the deprecated MPI-2 C++ bindings (Open MPI's mpicxx.h, MPICH's) are not
// needed and warn under -Wextra.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace rlpo::dist {

class MpiReductions final : public Reductions {
public:
    explicit MpiReductions(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
        check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
        check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    }

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    MPI_Comm comm() const { return comm_; }

    void sum(double* x, std::size_t n) const override {
        if (size_ == 1 || n == 0) return;  // n = 0: nothing to exchange on any rank
        std::vector<double> all(n * static_cast<std::size_t>(size_));
        check(MPI_Allgather(x, static_cast<int>(n), MPI_DOUBLE, all.data(), static_cast<int>(n),
                            MPI_DOUBLE, comm_),
              "MPI_Allgather");
        for (std::size_t k = 0; k < n; ++k) {
            double s = 0.0;
            for (int r = 0; r < size_; ++r) s += all[static_cast<std::size_t>(r) * n + k];
            x[k] = s;
        }
    }
    void max(double* x, std::size_t n) const override { allreduce(x, n, MPI_MAX); }
    void min(double* x, std::size_t n) const override { allreduce(x, n, MPI_MIN); }

    std::vector<std::vector<double>> gather(const std::vector<double>& local) const override {
        if (size_ == 1) return {local};
        int mine = static_cast<int>(local.size());
        std::vector<int> counts(static_cast<std::size_t>(size_)),
            displs(static_cast<std::size_t>(size_));
        check(MPI_Allgather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_), "MPI_Allgather");
        int total = 0;
        for (int r = 0; r < size_; ++r) {
            displs[static_cast<std::size_t>(r)] = total;
            total += counts[static_cast<std::size_t>(r)];
        }
        std::vector<double> all(static_cast<std::size_t>(total));
        check(MPI_Allgatherv(local.data(), mine, MPI_DOUBLE, all.data(), counts.data(),
                             displs.data(), MPI_DOUBLE, comm_),
              "MPI_Allgatherv");
        std::vector<std::vector<double>> out(static_cast<std::size_t>(size_));
        for (int r = 0; r < size_; ++r) {
            const auto b = all.begin() + displs[static_cast<std::size_t>(r)];
            out[static_cast<std::size_t>(r)].assign(b, b + counts[static_cast<std::size_t>(r)]);
        }
        return out;
    }

    using Reductions::max;
    using Reductions::min;
    using Reductions::sum;

private:
    static void check(int rc, const char* what) {
        if (rc != MPI_SUCCESS)
            throw std::runtime_error(std::string("rlpo::dist::MpiReductions: ") + what +
                                     " failed with error code " + std::to_string(rc));
    }
    void allreduce(double* x, std::size_t n, MPI_Op op) const {
        if (size_ == 1 || n == 0) return;
        check(MPI_Allreduce(MPI_IN_PLACE, x, static_cast<int>(n), MPI_DOUBLE, op, comm_),
              "MPI_Allreduce");
    }

    MPI_Comm comm_;
    int rank_ = 0;
    int size_ = 1;
};

}  // namespace rlpo::dist
