#pragma once
// The rlpo side of benchmarks/compare_pytorch.py: a binary registers named workloads (each a
// setup returning a closure that does one value+gradient call), and `compare_main` runs
// `--workload NAME --reps N`, printing "ms <milliseconds>" per repetition after one warm-up.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>

namespace rlpo_bench {

using Step = std::function<void()>;
using Setup = std::function<Step()>;

inline std::map<std::string, Setup>& registry() {
    static std::map<std::string, Setup> r;
    return r;
}

struct Register {
    Register(const std::string& name, Setup s) { registry()[name] = std::move(s); }
};

inline int compare_main(int argc, char** argv) {
    std::string name;
    int reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string k = argv[i];
        if (k == "--workload")
            name = argv[i + 1];
        else if (k == "--reps")
            reps = std::atoi(argv[i + 1]);
    }
    const auto it = registry().find(name);
    if (it == registry().end()) {
        std::fprintf(stderr, "unknown workload '%s'; known:", name.c_str());
        for (const auto& e : registry()) std::fprintf(stderr, " %s", e.first.c_str());
        std::fprintf(stderr, "\n");
        return 2;
    }
    Step step = it->second();
    step();  // warm-up
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        const auto t1 = std::chrono::steady_clock::now();
        std::printf("ms %.6f\n", std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return 0;
}

}  // namespace rlpo_bench
