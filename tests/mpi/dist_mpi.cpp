// The data-parallel scenarios (tests/dist/scenarios.hpp) under MPI: run with mpirun -np P
// (ctest: P = 1, 2, 4, label mpi). Each rank compares its MpiReductions results with one call
// on the whole batch; the exit code is 0 only when every rank passed every check and the split
// group was rejected on every rank. Failures are printed by the rank that saw them.
#include "dist/scenarios.hpp"

#include <rlpo/dist/mpi.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int failed = 0, checks = 0;
    {
        const rlpo::dist::MpiReductions red(MPI_COMM_WORLD);
        try {
            const dist_test::Report rep = dist_test::run_all(red);
            checks = rep.checks;
            for (const auto& f : rep.failures) std::printf("FAILED %s\n", f.c_str());
            failed += static_cast<int>(rep.failures.size());
            if (red.size() >= 2) {
                const std::string msg = dist_test::straddling_message(red);
                if (msg.find("has responses on rank 0 and on rank 1") == std::string::npos ||
                    msg.find("each rank must hold whole groups") == std::string::npos) {
                    std::printf("FAILED rank %d: split group not rejected: '%s'\n", red.rank(),
                                msg.c_str());
                    ++failed;
                }
            }
        } catch (const std::exception& e) {
            std::printf("FAILED rank %d: exception %s\n", red.rank(), e.what());
            std::fflush(stdout);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        int total = 0;
        MPI_Allreduce(&failed, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        if (red.rank() == 0)
            std::printf("%s: %d ranks, %d checks on rank 0, %d failures\n",
                        total == 0 ? "PASSED" : "FAILED", red.size(), checks, total);
        failed = total;
    }
    MPI_Finalize();
    return failed == 0 ? 0 : 1;
}
