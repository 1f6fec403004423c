// The rlpo side of the vocab/ workloads of compare_pytorch.py (benchmarks/compare/vocab.py):
// one value + gradient (w.r.t. the student logits) call per step, float logits, gradient
// written into a preallocated [N, V] buffer — the same work as the PyTorch eager step
// (forward + backward producing the student-logit gradient).
// Schedule studies (environment): RLPO_BENCH_SPLIT_BYTES and RLPO_BENCH_IDLE_FRACTION set
// FastPathTuning::split_bytes and split_idle_fraction; RLPO_BENCH_STATS=1 prints after each
// call, to stderr, how many calls so far gave up the row split for row blocks.
#include "compare_main.hpp"

#include <rlpo/distill/divergences.hpp>
#include <rlpo/testing/random.hpp>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace {

using rlpo::Index;
using rlpo::Mat;
using rlpo::distill::Divergence;

struct Work {
    Mat<float> z, y, g, mask;
    rlpo::distill::DistillOptions o;
};

rlpo_bench::Setup setup(Divergence d, Index N, Index V) {
    return [=]() -> rlpo_bench::Step {
        auto w = std::make_shared<Work>();
        rlpo::testing::Generator gen(7);
        w->z.resize(N, V);
        w->y.resize(N, V);
        for (Index k = 0; k < w->z.size(); ++k) {
            w->z.data()[k] = static_cast<float>(gen.uniform(-3.0, 3.0));
            w->y.data()[k] = static_cast<float>(gen.uniform(-3.0, 3.0));
        }
        w->g.setZero(N, V);
        w->mask = Mat<float>::Ones(N, 1);
        w->o = rlpo::distill::DistillOptions::make(d);
        w->o.beta = 0.5;
        if (const char* b = std::getenv("RLPO_BENCH_SPLIT_BYTES"))
            w->o.tuning.split_bytes = static_cast<std::size_t>(std::strtoull(b, nullptr, 10));
        if (const char* f = std::getenv("RLPO_BENCH_IDLE_FRACTION"))
            w->o.tuning.split_idle_fraction = std::strtod(f, nullptr);
        static rlpo::distill::FastPathStats stats;
        if (std::getenv("RLPO_BENCH_STATS")) w->o.stats = &stats;
        return [w]() {
            const auto r = rlpo::distill::divergence(w->z, w->y, w->mask, w->o, rlpo::Normalizer{},
                                                     rlpo::write_to<float>(w->g));
            if (w->o.stats)
                std::fprintf(stderr, "fallbacks %zu\n", w->o.stats->split_fallbacks.load());
            volatile double sink = r.value;
            (void)sink;
        };
    };
}

struct Reg {
    Reg() {
        const struct {
            const char* name;
            Divergence d;
        } kinds[] = {{"forward_kl", Divergence::ForwardKL},
                     {"reverse_kl", Divergence::ReverseKL},
                     {"jsd0.5", Divergence::JSD},
                     {"tvd", Divergence::TVD}};
        const struct { Index N, V; } shapes[] = {{2048, 32768}, {256, 151936}};
        for (const auto& k : kinds)
            for (const auto& s : shapes)
                rlpo_bench::registry()["vocab/" + std::string(k.name) + "_" + std::to_string(s.N) +
                                       "x" + std::to_string(s.V)] = setup(k.d, s.N, s.V);
    }
} reg;

}  // namespace

int main(int argc, char** argv) { return rlpo_bench::compare_main(argc, argv); }
