"""The demo's twin in Python: a tiny PyTorch policy learns the demo's task (the two digits of
a + b, ones first, then EOS; examples/demo/task.hpp) with GRPO, rlpo computing the loss
through ``rlpo.torch`` (autograd Functions: ``loss.backward()`` fills the policy's gradients).

    PYTHONPATH=build/python /usr/bin/python3 examples/python/grpo_demo.py [--steps N] [--seed N]

The policy is linear softmax, as in examples/libtorch/grpo.cpp: one weight matrix per position
over one-hot features of the prompt (a, b, the pair) and the previous token. Per step: sample G
responses for each of P prompts, score them (partial credit for a correct prefix, as the demo),
GRPO advantages (``rlpo.rollout``), then two epochs of PPO clip (verl preset) + β · k3 KL
against the initial policy, both aggregated seq-mean-token-mean, and Adam. Prints the mean
reward every 10 steps; exits 1 unless the last 10 steps' reward beats the first 10 by 0.2.
"""

import argparse
import sys

import torch

import rlpo
import rlpo.torch as rt

T = 4  # response length cap (the answer is 3 tokens)
VOCAB, EOS, BOS = 11, 10, 11  # digits 0-9, EOS; BOS is the "previous token" of position 0
FEATURES = 10 + 10 + 100 + 12


def answer(a, b):
    s = a + b
    return [s % 10, s // 10, EOS]


def reward(a, b, response):
    """Leading tokens that match the answer + EOS, over its length (1 only when exact)."""
    want = answer(a, b)
    k = 0
    while k < len(want) and k < len(response) and response[k] == want[k]:
        k += 1
    return k / len(want)


def features(a, b, prev):
    n = a.shape[0]
    x = torch.zeros(n, FEATURES)
    rows = torch.arange(n)
    x[rows, a] = 1.0
    x[rows, 10 + b] = 1.0
    x[rows, 20 + 10 * a + b] = 1.0
    x[rows, 120 + prev] = 1.0
    return x


def token_logp(W, a, b, tokens):
    """Log-probs [N, T] of the tokens; position t conditions on the prompt and token t - 1."""
    cols = []
    for t in range(T):
        prev = torch.full_like(a, BOS) if t == 0 else tokens[:, t - 1]
        logits = features(a, b, prev) @ W[t]
        cols.append(torch.log_softmax(logits, 1).gather(1, tokens[:, t:t + 1]))
    return torch.cat(cols, 1).contiguous()


@torch.no_grad()
def sample(W, prompts, group, gen):
    a = torch.randint(0, 10, (prompts,), generator=gen).repeat_interleave(group)
    b = torch.randint(0, 10, (prompts,), generator=gen).repeat_interleave(group)
    n = a.shape[0]
    tokens = torch.zeros(n, T, dtype=torch.long)
    mask = torch.zeros(n, T)
    done = torch.zeros(n, dtype=torch.bool)
    prev = torch.full((n,), BOS, dtype=torch.long)
    for t in range(T):
        probs = torch.softmax(features(a, b, prev) @ W[t], 1)
        pick = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        live = ~done
        tokens[live, t] = pick[live]
        mask[live, t] = 1.0
        prev = torch.where(live, pick, prev)
        done = done | (live & (pick == EOS))
    scores = torch.tensor([
        reward(int(a[i]), int(b[i]), tokens[i, :int(mask[i].sum())].tolist()) for i in range(n)
    ])
    old_logp = token_logp(W, a, b, tokens) * mask
    return a, b, tokens, mask, old_logp, scores


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)
    prompts, group, beta = 16, 8, 0.04

    W = torch.zeros(T, FEATURES, VOCAB, requires_grad=True)
    W_ref = W.detach().clone()
    opt = torch.optim.Adam([W], lr=0.05)
    agg = dict(aggregation="seq-mean-token-mean")

    first = last = 0.0
    for step in range(args.steps):
        a, b, tokens, mask, old_logp, scores = sample(W, prompts, group, gen)
        adv_seq = rlpo.rollout.grpo_advantages(scores.numpy(), group_size=group)
        adv = torch.from_numpy(rlpo.rollout.broadcast_to_tokens(adv_seq, mask.numpy()))
        with torch.no_grad():
            ref_logp = token_logp(W_ref, a, b, tokens) * mask
        for _ in range(2):
            logp = token_logp(W, a, b, tokens)
            pg, m = rt.ppo_clip(logp, old_logp, adv, mask, preset="verl", return_metrics=True,
                                **agg)
            kl, km = rt.kl_penalty(logp, ref_logp, mask, preset="verl", estimator="k3",
                                   return_metrics=True, **agg)
            loss = pg + beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
        r = float(scores.mean())
        if step < 10:
            first += r / 10
        if step >= args.steps - 10:
            last += r / 10
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  reward {r:.3f}  loss {float(loss):+.4f}  kl {km['kl']:.4f}  "
                  f"clipfrac {m['pg_clipfrac']:.3f}")
    improved = last >= first + 0.2
    print(f"mean reward: first 10 steps {first:.3f}, last 10 steps {last:.3f}: "
          f"{'improved' if improved else 'NOT improved'}")
    return 0 if improved else 1


if __name__ == "__main__":
    sys.exit(main())
