// A consumer program: links rlpo::rlpo through one of the packaging routes and calls PPO clip.
#include <rlpo/rlpo.hpp>

#include <cmath>
#include <cstdio>

int main() {
    const float logp_buf[] = {-1.0f, -0.5f, -2.0f, -0.1f, -0.7f, -1.5f};
    const float old_buf[] = {-1.1f, -0.4f, -1.0f, -0.2f, -0.7f, -3.0f};
    const float adv_buf[] = {1.0f, 1.0f, 1.0f, -0.5f, -0.5f, -0.5f};
    const float mask_buf[] = {1, 1, 1, 1, 1, 0};
    const auto logp = rlpo::view(logp_buf, 2, 3);  // zero-copy views over the trainer's buffers
    const auto old_logp = rlpo::view(old_buf, 2, 3);
    const auto adv = rlpo::view(adv_buf, 2, 3);
    const auto mask = rlpo::view(mask_buf, 2, 3);
    const auto r =
        rlpo::policy::ppo_clip(logp, old_logp, adv, mask, rlpo::policy::PPOClipOptions::verl());
    std::printf("ppo_clip value=%.6f pg_clipfrac=%.4f grad[0,0]=%.6f\n", r.value,
                r.metrics["pg_clipfrac"], static_cast<double>(r.grad(0, 0)));
    return std::isfinite(r.value) && r.grad(1, 2) == 0.0f ? 0 : 1;
}
