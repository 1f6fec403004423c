// rlpo side of the token/ workloads of benchmarks/compare_pytorch.py (see compare/token_level.py):
// the same inputs, shapes and work as the PyTorch closure, value and gradient w.r.t. logp.
#include "compare_main.hpp"

#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/policy/ppo_clip.hpp>

#include <cmath>
#include <memory>
#include <random>

namespace {

struct Inputs {
    rlpo::Mat<float> logp, old, ref, adv, mask, grad;
};

// B×T = 256×4096 float; response lengths between T/4 and T; one advantage per sequence.
std::shared_ptr<Inputs> make_inputs(rlpo::Index B, rlpo::Index T) {
    auto in = std::make_shared<Inputs>();
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::normal_distribution<double> nrm(0.0, 1.0);
    for (auto* m : {&in->logp, &in->old, &in->ref, &in->adv, &in->mask, &in->grad}) m->resize(B, T);
    for (rlpo::Index i = 0; i < B; ++i) {
        const double a = nrm(rng);
        const auto len = static_cast<rlpo::Index>(T * (0.25 + 0.75 * u(rng)));
        for (rlpo::Index t = 0; t < T; ++t) {
            const double lp = -std::abs(nrm(rng)) * 2.0;
            in->logp(i, t) = static_cast<float>(lp);
            in->old(i, t) = static_cast<float>(lp + 0.3 * nrm(rng));
            in->ref(i, t) = static_cast<float>(lp + 0.5 * nrm(rng));
            in->adv(i, t) = static_cast<float>(a);
            in->mask(i, t) = t < len ? 1.0f : 0.0f;
        }
    }
    return in;
}

// PPO clip + dual-clip (c = 3, log-ratio clamp ±20: verl) + k3 KL in the loss (β = 0.001,
// clamped as verl), token-mean; gradient of the total into one buffer.
const rlpo_bench::Register ppo_dual_k3("token/ppo_dual_k3_token_mean_256x4096", [] {
    auto in = make_inputs(256, 4096);
    return rlpo_bench::Step([in] {
        const auto r1 = rlpo::policy::ppo_clip(in->logp, in->old, in->adv, in->mask,
                                               rlpo::policy::PPOClipOptions::verl(), {},
                                               rlpo::write_to(in->grad));
        const auto r2 = rlpo::penalties::kl_penalty(in->logp, in->ref, in->mask,
                                                    rlpo::penalties::KLOptions::verl(), {},
                                                    rlpo::add_to(in->grad, 0.001));
        volatile double sink = r1.value + r2.value;
        (void)sink;
    });
});

}  // namespace

int main(int argc, char** argv) { return rlpo_bench::compare_main(argc, argv); }
