// The smallest working example: one PPO-clip + k3 KL loss over a trainer's own buffers.
#include <rlpo/rlpo.hpp>

#include <cstdio>
#include <exception>
#include <vector>

int main() try {
    const rlpo::Index B = 2, T = 4;
    // The trainer's buffers (row-major [B, T]); rlpo reads them in place.
    std::vector<float> logp{-1.0f, -0.8f, -2.1f, -0.3f, -0.5f, -1.2f, -0.9f, -4.0f};
    std::vector<float> old_logp{-1.1f, -0.7f, -1.5f, -0.3f, -0.6f, -1.2f, -2.0f, -4.0f};
    std::vector<float> ref_logp{-1.0f, -1.0f, -2.0f, -0.4f, -0.5f, -1.0f, -1.0f, -4.0f};
    std::vector<float> adv{0.8f, 0.8f, 0.8f, 0.8f, -0.8f, -0.8f, -0.8f, -0.8f};
    std::vector<float> mask{1, 1, 1, 1, 1, 1, 1, 0};

    const auto lp = rlpo::view(logp.data(), B, T);
    std::vector<float> grad(logp.size());
    auto g = rlpo::view(grad.data(), B, T);

    rlpo::Normalizer norm;  // token-mean over this batch (pass global counts across micro-batches)
    const auto pg =
        rlpo::policy::ppo_clip(lp, rlpo::view(old_logp.data(), B, T), rlpo::view(adv.data(), B, T),
                               rlpo::view(mask.data(), B, T), rlpo::policy::PPOClipOptions::verl(),
                               norm, rlpo::write_to<float>(g));
    const auto kl = rlpo::penalties::kl_penalty(lp, rlpo::view(ref_logp.data(), B, T),
                                                rlpo::view(mask.data(), B, T), {}, norm,
                                                rlpo::add_to<float>(g, 0.001));
    std::printf("loss = %.6f  (pg %.6f + kl %.6f)\n", pg.value + kl.value, pg.value, kl.value);
    std::printf("pg_clipfrac = %.3f  pg_clipfrac_lower = %.3f  ppo_kl = %.4f  kl = %.4f\n",
                pg.metrics["pg_clipfrac"], pg.metrics["pg_clipfrac_lower"], pg.metrics["ppo_kl"],
                kl.metrics["kl"]);
    std::printf("d loss / d logp =");
    for (float x : grad) std::printf(" %.4f", static_cast<double>(x));
    std::printf("\n");
    return 0;
} catch (const std::exception& e) {  // rlpo::invalid_argument on bad input
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}
