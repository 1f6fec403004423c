// The rlpo side of the vocab/token_logps_* workloads of compare_pytorch.py
// (benchmarks/compare/logits.py): one fused forward + backward call per step
// (`token_logps_vjp`, float logits, a fixed upstream ∂loss/∂logp), the gradient written into a
// preallocated [N, V] buffer — the same work as the PyTorch eager step (TRL's
// selective_log_softmax, (logp · g).sum(), backward to the logits).
#include "compare_main.hpp"

#include <rlpo/logits/token_logps.hpp>
#include <rlpo/testing/random.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace {

using rlpo::Index;
using rlpo::Mat;

struct Work {
    Mat<float> z, grad, up, mask;
    Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> labels;
};

rlpo_bench::Setup setup(Index N, Index V) {
    return [=]() -> rlpo_bench::Step {
        auto w = std::make_shared<Work>();
        rlpo::testing::Generator gen(7);
        w->z.resize(N, V);
        for (Index k = 0; k < w->z.size(); ++k)
            w->z.data()[k] = static_cast<float>(gen.uniform(-3.0, 3.0));
        w->grad.setZero(N, V);
        w->labels.resize(N, 1);
        w->up.resize(N, 1);
        for (Index n = 0; n < N; ++n) {
            w->labels(n, 0) = static_cast<std::int64_t>(gen.uniform() * static_cast<double>(V)) % V;
            w->up(n, 0) = static_cast<float>(gen.uniform(-1.0, 1.0));
        }
        w->mask = Mat<float>::Ones(N, 1);
        return [w]() {
            const auto r = rlpo::logits::token_logps_vjp(w->z, w->labels, w->mask, w->up,
                                                         rlpo::logits::TokenLogpsOptions{},
                                                         rlpo::write_to<float>(w->grad));
            volatile double sink = r.value;
            (void)sink;
        };
    };
}

struct Reg {
    Reg() {
        const struct { Index N, V; } shapes[] = {{2048, 32768}, {256, 151936}};
        for (const auto& s : shapes)
            rlpo_bench::registry()["vocab/token_logps_" + std::to_string(s.N) + "x" +
                                   std::to_string(s.V)] = setup(s.N, s.V);
    }
} reg;

}  // namespace

int main(int argc, char** argv) { return rlpo_bench::compare_main(argc, argv); }
