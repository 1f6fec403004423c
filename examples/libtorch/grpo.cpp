// rlpo from LibTorch: a tiny LibTorch policy learns the demo's task (the two digits of a + b,
// ones first, then EOS; examples/demo/task.hpp) with GRPO, rlpo computing the loss.
//
//   rlpo_libtorch_grpo [--steps N] [--seed N]
//
// The policy is linear softmax: one weight matrix per position over one-hot features of the
// prompt (a, b, the pair) and the previous token, trained by LibTorch autograd and
// torch::optim::Adam. Per step: sample G responses for each of P prompts (no grad), score
// them, GRPO advantages (rlpo::rollout), then for two epochs: the forward pass gives
// log-probs [B, T] (a LibTorch graph), rlpo::train::TrainingStep reads them in place through
// rlpo::libtorch::view (PPO clip + k3 KL against the initial policy, one normaliser) and
// returns ∂loss/∂logp, and `logp.backward(grad)` takes it from there. (For single
// objectives, rlpo::libtorch::ppo_clip / kl_penalty are autograd Functions: loss.backward().)
// Prints the mean reward every 10 steps; exits 1 unless the reward of the last 10 steps is
// above that of the first 10 by at least 0.2 (a ctest test, libtorch/grpo).
#include "../demo/task.hpp"

#include <rlpo/interop/torch.hpp>
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/rollout/tokens.hpp>
#include <rlpo/train/step.hpp>

#include <ATen/Parallel.h>
#include <torch/optim/adam.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int kT = 4;                          // response length cap (answer: 3 tokens)
constexpr int kFeatures = 10 + 10 + 100 + 12;  // a, b, the pair, previous token (or BOS)

/// One-hot features of a context (prompt and previous token), [n, kFeatures].
at::Tensor features(const std::vector<int>& a, const std::vector<int>& b,
                    const std::vector<int>& prev) {
    const auto n = static_cast<int64_t>(a.size());
    at::Tensor x = at::zeros({n, kFeatures});
    auto acc = x.accessor<float, 2>();
    for (int64_t i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        acc[i][a[k]] = 1.0f;
        acc[i][10 + b[k]] = 1.0f;
        acc[i][20 + 10 * a[k] + b[k]] = 1.0f;
        acc[i][120 + prev[k]] = 1.0f;
    }
    return x;
}

struct Rollout {
    std::vector<int> a, b;
    at::Tensor tokens, mask, old_logp;  // [N, T]
    rlpo::Vec<float> score;
    double mean_reward = 0.0;
};

/// Log-probs [N, T] of `tokens` under weights W [T, F, V] (a LibTorch graph when W requires
/// grad); row n, position t conditions on the prompt and token t − 1.
at::Tensor token_logp(const at::Tensor& W, const Rollout& r) {
    const auto N = static_cast<int64_t>(r.a.size());
    std::vector<at::Tensor> cols;
    auto tok = r.tokens.accessor<int64_t, 2>();
    for (int t = 0; t < kT; ++t) {
        std::vector<int> prev(static_cast<std::size_t>(N));
        for (int64_t i = 0; i < N; ++i)
            prev[static_cast<std::size_t>(i)] =
                t == 0 ? demo::kBos : static_cast<int>(tok[i][t - 1]);
        const at::Tensor logits = at::matmul(features(r.a, r.b, prev), W[t]);
        cols.push_back(at::log_softmax(logits, 1).gather(1, r.tokens.select(1, t).unsqueeze(1)));
    }
    return at::cat(cols, 1).contiguous();
}

Rollout sample(const at::Tensor& W, int prompts, int group, std::mt19937_64& rng) {
    at::NoGradGuard no_grad;
    Rollout r;
    std::uniform_int_distribution<int> digit(0, 9);
    for (int p = 0; p < prompts; ++p) {
        const int a = digit(rng), b = digit(rng);
        for (int g = 0; g < group; ++g) {
            r.a.push_back(a);
            r.b.push_back(b);
        }
    }
    const auto N = static_cast<int64_t>(r.a.size());
    r.tokens = at::zeros({N, kT}, at::kLong);
    r.mask = at::zeros({N, kT});
    std::vector<int> prev(static_cast<std::size_t>(N), demo::kBos);
    std::vector<bool> done(static_cast<std::size_t>(N), false);
    for (int t = 0; t < kT; ++t) {
        const at::Tensor probs = at::softmax(at::matmul(features(r.a, r.b, prev), W[t]), 1);
        const at::Tensor pick = at::multinomial(probs, 1).squeeze(1).contiguous();
        auto pk = pick.accessor<int64_t, 1>();
        auto tw = r.tokens.accessor<int64_t, 2>();
        auto mw = r.mask.accessor<float, 2>();
        for (int64_t i = 0; i < N; ++i) {
            const auto k = static_cast<std::size_t>(i);
            if (done[k]) continue;
            const int v = static_cast<int>(pk[i]);
            tw[i][t] = v;
            mw[i][t] = 1.0f;
            prev[k] = v;
            done[k] = v == demo::kEos;
        }
    }
    r.old_logp = token_logp(W, r) * r.mask;
    r.score.resize(N);
    auto tok = r.tokens.accessor<int64_t, 2>();
    auto m = r.mask.accessor<float, 2>();
    for (int64_t i = 0; i < N; ++i) {
        std::vector<int> resp;
        for (int t = 0; t < kT && m[i][t] > 0.0f; ++t) resp.push_back(static_cast<int>(tok[i][t]));
        bool correct = false;
        const auto k = static_cast<std::size_t>(i);
        r.score[i] = static_cast<float>(demo::reward(r.a[k], r.b[k], resp, correct));
    }
    r.mean_reward = static_cast<double>(r.score.mean());
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    int steps = 120;
    std::uint64_t seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
        if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[i + 1], nullptr, 10);
    }
    at::set_num_threads(1);
    at::manual_seed(seed);
    std::mt19937_64 rng(seed);
    const int prompts = 16, group = 8;

    at::Tensor W = at::zeros({kT, kFeatures, demo::kVocab}).requires_grad_(true);
    const at::Tensor W_ref = W.detach().clone();  // the reference policy of the KL term
    torch::optim::Adam opt({W}, torch::optim::AdamOptions(0.05));

    // GRPO (Shao et al. 2024): PPO clip (verl preset), k3 KL in the loss (β = 0.04), mean over
    // responses of per-response token means.
    rlpo::train::StepOptions so;
    so.policy = rlpo::policy::make_policy_loss("vanilla", rlpo::policy::Anchor::Verl);
    so.kl = rlpo::penalties::KLOptions::verl(rlpo::penalties::KLEstimator::K3);
    so.kl_coef = 0.04;
    so.norm.mode = rlpo::Aggregation::SeqMeanTokenMean;
    const rlpo::train::TrainingStep<float> step(so);
    namespace rl = rlpo::libtorch;

    double first = 0.0, last = 0.0;
    for (int s = 0; s < steps; ++s) {
        const Rollout r = sample(W, prompts, group, rng);
        const rlpo::Vec<float> adv_seq = rlpo::rollout::grpo_advantages(
            r.score, rlpo::rollout::Groups::equal(static_cast<rlpo::Index>(r.a.size()), group));
        const rlpo::Mat<float> adv =
            rlpo::rollout::broadcast_to_tokens(adv_seq, rl::view<float>(r.mask));
        at::Tensor ref_logp;
        {
            at::NoGradGuard no_grad;
            ref_logp = token_logp(W_ref, r) * r.mask;
        }
        rlpo::train::StepResult<float> res;
        for (int epoch = 0; epoch < 2; ++epoch) {
            const at::Tensor logp = token_logp(W, r);
            const at::Tensor logp_values = logp.detach();
            rlpo::train::StepInputs<float> in;
            in.logp = rl::view<float>(logp_values, "logp");
            in.old_logp = rl::view<float>(r.old_logp, "old_logp");
            in.ref_logp = rl::view<float>(ref_logp, "ref_logp");
            in.mask = rl::view<float>(r.mask, "mask");
            in.advantages = adv;
            // the step's ∂loss/∂logp goes straight into a tensor the backward pass reads
            at::Tensor grad = at::empty_like(logp_values);
            res = step(in,
                       {rl::grad_out<float>(grad), rlpo::no_grad<float>(), rlpo::no_grad<float>()});
            opt.zero_grad();
            logp.backward(grad);
            opt.step();
        }
        if (s < 10) first += r.mean_reward / 10.0;
        if (s >= steps - 10) last += r.mean_reward / 10.0;
        if (s % 10 == 0 || s == steps - 1)
            std::printf("step %4d  reward %.3f  loss %+.4f  kl %.4f  clipfrac %.3f\n", s,
                        r.mean_reward, res.loss, res.metrics["actor/kl_loss"],
                        res.metrics["actor/pg_clipfrac"]);
    }
    const bool improved = last >= first + 0.2;
    std::printf("mean reward: first 10 steps %.3f, last 10 steps %.3f: %s\n", first, last,
                improved ? "improved" : "NOT improved");
    return improved ? 0 : 1;
}
