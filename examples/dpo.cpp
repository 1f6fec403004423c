// DPO over a trainer's own buffers: [B] summed log-probs of the chosen and rejected completions
// in, loss, metrics and the gradient w.r.t. the policy's log-probs out. (From logits instead:
// rlpo::train::dpo_from_logits in <rlpo/train/preference_step.hpp>.)
#include <rlpo/rlpo.hpp>

#include <cstdio>
#include <exception>
#include <vector>

int main() try {
    const rlpo::Index B = 3;
    // TRL's concatenated layout: [chosen; rejected] policy log-probs, one buffer of 2B.
    std::vector<float> policy{-12.0f, -30.5f, -8.25f, /**/ -14.0f, -29.0f, -11.5f};
    std::vector<float> ref_chosen{-12.5f, -31.0f, -8.0f}, ref_rejected{-13.0f, -29.5f, -11.0f};
    std::vector<float> grad(policy.size());

    // TRL loss_type=["sigmoid", "sft"] would also need the completion lengths; plain DPO here.
    rlpo::preference::DPOOptions opts = rlpo::preference::make_dpo_options({"sigmoid"});
    opts.beta = 0.1;
    const auto pi = rlpo::view(policy.data(), 2, B);
    const auto r =
        rlpo::preference::dpo_loss(pi.row(0), pi.row(1), rlpo::view(ref_chosen.data(), 1, B).row(0),
                                   rlpo::view(ref_rejected.data(), 1, B).row(0), opts,
                                   rlpo::write_to<float>(rlpo::view(grad.data(), 2, B)));
    std::printf("dpo loss = %.6f  accuracy = %.3f  margin = %.4f\n", r.value,
                r.metrics["rewards/accuracies"], r.metrics["rewards/margins"]);
    std::printf("d loss / d [chosen; rejected] log-probs =");
    for (float x : grad) std::printf(" %.5f", static_cast<double>(x));
    std::printf("\n");
    return 0;
} catch (const std::exception& e) {  // rlpo::invalid_argument on bad input
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}
