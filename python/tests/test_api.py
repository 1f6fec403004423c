"""The binding contract: input checks naming the argument, the two exception types, out=
(written in place, no copy), the GIL released (two threads at once), torch CPU tensors."""

import threading

import numpy as np
import pytest
import torch

import rlpo
from conftest import tokens


def test_dtype_layout_shape_errors():
    logp, old, _, adv, m = tokens()
    with pytest.raises(TypeError, match="old_logp: expected dtype float64 .*given float32"):
        rlpo.policy.ppo_clip(logp, old.astype(np.float32), adv, m)
    with pytest.raises(TypeError, match="logp: expected dtype float32 or float64, given int64"):
        rlpo.policy.ppo_clip(logp.astype(np.int64), old, adv, m)
    with pytest.raises(TypeError, match="mask: expected a NumPy array or a torch CPU tensor"):
        rlpo.policy.ppo_clip(logp, old, adv, m.tolist())
    with pytest.raises(ValueError, match="advantages: must be C-contiguous"):
        rlpo.policy.ppo_clip(logp, old, np.asfortranarray(adv), m)
    with pytest.raises(ValueError, match="advantages: must be C-contiguous"):
        rlpo.policy.ppo_clip(logp, old, adv[:, ::2], m[:, ::2].copy())
    with pytest.raises(ValueError, match=r"mask: expected shape \[4, 7\] \(same as logp\)"):
        rlpo.policy.ppo_clip(logp, old, adv, m[:, :5].copy())
    with pytest.raises(ValueError, match="expected a 2-D array"):
        rlpo.policy.ppo_clip(logp[0], old, adv, m)
    with pytest.raises(TypeError, match="float64 .*given >f8"):
        rlpo.penalties.kl_penalty(logp, old.astype(">f8"), m)


def test_torch_input_checks():
    logp, old, _, adv, m = [torch.from_numpy(a) for a in tokens()]
    with pytest.raises(ValueError, match="old_logp: tensors on device 'meta'"):
        rlpo.policy.ppo_clip(logp, old.to("meta"), adv, m)
    with pytest.raises(ValueError, match="logp: must be C-contiguous"):
        rlpo.policy.ppo_clip(logp.t(), old.t(), adv.t(), m.t())
    with pytest.raises(TypeError, match="mask: expected dtype float32 or float64, given "
                                        "torch.bfloat16"):
        rlpo.policy.ppo_clip(logp, old, adv, m.to(torch.bfloat16))
    # tensors that require grad are read through a detached view
    r = rlpo.policy.ppo_clip(logp.clone().requires_grad_(), old, adv, m)
    assert np.isfinite(r.value)


def test_numerical_error_is_arithmetic_error():
    x = [np.array([-1e300, -2.0]), np.array([1e300, -1.0]), np.array([0.0, 0.0]),
         np.array([0.0, 0.0])]
    with pytest.raises(ArithmeticError) as e:
        rlpo.preference.dpo_loss(*x, loss_type="sppo_hard")
    assert isinstance(e.value, rlpo.NumericalError)
    assert "preference::dpo_loss" in str(e.value)


def test_invalid_argument_is_value_error_with_the_message():
    logp, old, _, adv, m = tokens()
    logp = logp.copy()
    logp[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"rlpo::policy::ppo_clip\(\): logp: NaN at \[0, 1\]"):
        rlpo.policy.ppo_clip(logp, old, adv, m)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_out_is_written_in_place(dtype):
    logp, old, ref, adv, m = tokens(dtype=dtype)
    expect = rlpo.policy.ppo_clip(logp, old, adv, m).grad
    out = np.full_like(logp, 7.0)
    r = rlpo.policy.ppo_clip(logp, old, adv, m, out=out)
    assert r.grad is out and np.shares_memory(r.grad, out)
    np.testing.assert_array_equal(out, expect)
    # accumulate: + coef·∂kl (how a trainer sums terms in one buffer)
    kl = rlpo.penalties.kl_penalty(logp, ref, m).grad
    r2 = rlpo.penalties.kl_penalty(logp, ref, m, out=out, accumulate=True, coef=0.5)
    assert r2.grad is out
    np.testing.assert_allclose(out, expect + 0.5 * kl, rtol=1e-6)
    # a torch tensor as out: its own memory is written
    t = torch.zeros(logp.shape, dtype=torch.from_numpy(logp).dtype)
    r3 = rlpo.policy.ppo_clip(torch.from_numpy(logp), old, adv, m, out=t)
    assert r3.grad is t
    np.testing.assert_array_equal(t.numpy(), expect)
    # compute_grad=False: no gradient
    assert rlpo.policy.ppo_clip(logp, old, adv, m, compute_grad=False).grad is None


def test_out_checks():
    logp, old, _, adv, m = tokens()
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 7\), given \(4, 6\)"):
        rlpo.policy.ppo_clip(logp, old, adv, m, out=np.zeros((4, 6)))
    with pytest.raises(TypeError, match="out: expected dtype float64"):
        rlpo.policy.ppo_clip(logp, old, adv, m, out=np.zeros((4, 7), np.float32))
    ro = np.zeros((4, 7))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: is read-only"):
        rlpo.policy.ppo_clip(logp, old, adv, m, out=ro)
    with pytest.raises(ValueError, match="out: must be C-contiguous"):
        rlpo.policy.ppo_clip(logp, old, adv, m, out=np.zeros((7, 4)).T)
    with pytest.raises(ValueError, match="accumulate: needs an out= array"):
        rlpo.policy.ppo_clip(logp, old, adv, m, accumulate=True)
    # [2, B] for dpo_loss, [B, T, V] for 3-D logits
    x = [np.array([-3.0, -4.0]), np.array([-5.0, -4.5]), np.array([-3.5, -4.0]),
         np.array([-4.0, -4.0])]
    g = np.zeros((2, 2))
    assert rlpo.preference.dpo_loss(*x, out=g).grad is g and np.any(g != 0)
    z = np.random.default_rng(0).normal(size=(2, 3, 5))
    g = np.zeros_like(z)
    r = rlpo.distill.divergence(z, z[::-1].copy(), out=g)
    assert r.grad is g and np.any(g != 0)


def test_two_threads_at_once():
    """Both threads run the C++ call with the GIL released; results equal the serial ones."""
    inputs = [tokens(B=64, T=512, seed=s) for s in (1, 2)]
    serial = [rlpo.policy.policy_loss("vanilla", lp, o, a, m) for lp, o, _, a, m in inputs]
    results = [None, None]
    barrier = threading.Barrier(2)

    def work(k):
        lp, o, _, a, m = inputs[k]
        barrier.wait()
        results[k] = [rlpo.policy.policy_loss("vanilla", lp, o, a, m) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        for r in results[k]:
            assert r.value == serial[k].value
            np.testing.assert_array_equal(r.grad, serial[k].grad)
            assert r.metrics == serial[k].metrics


def test_thread_limit():
    """rlpo.thread_limit caps the calls of the current thread only, nests, and changes no bit."""
    default = rlpo.threads_per_call()
    assert default >= 1
    rng = np.random.default_rng(3)
    z, y = rng.normal(size=(64, 3000)), rng.normal(size=(64, 3000))
    r0 = rlpo.distill.divergence(z, y)
    seen = []
    with rlpo.thread_limit(1):
        assert rlpo.threads_per_call() == 1
        with rlpo.thread_limit(3):
            assert rlpo.threads_per_call() == 3
        assert rlpo.threads_per_call() == 1
        r1 = rlpo.distill.divergence(z, y)
        other = threading.Thread(target=lambda: seen.append(rlpo.threads_per_call()))
        other.start()
        other.join()
    assert rlpo.threads_per_call() == default
    assert seen == [default]
    assert r1.value == r0.value
    np.testing.assert_array_equal(r1.grad, r0.grad)
    with pytest.raises(ValueError, match="threads: must be >= 0"):
        rlpo.thread_limit(-1)


def test_result_and_package():
    logp, old, _, adv, m = tokens()
    value, grad, metrics = rlpo.policy.ppo_clip(logp, old, adv, m)
    assert isinstance(metrics, dict) and set(metrics) == {"pg_clipfrac", "pg_clipfrac_lower",
                                                          "ppo_kl"}
    assert grad.flags["C_CONTIGUOUS"] and grad.flags["OWNDATA"] is False
    assert rlpo.__version__.count(".") == 2
    assert rlpo.policy.ppo_clip.__module__ == "rlpo.policy"


def test_readme_example():
    """The README's "Use from Python" example, with data."""
    import rlpo.torch
    logp, old_logp, ref_logp, adv, mask = tokens(B=32, T=6, dtype=np.float32)
    scores = np.random.default_rng(0).random(32).astype(np.float32)
    r = rlpo.policy.ppo_clip(logp, old_logp, adv, mask, preset="verl", clip_high=0.28,
                             aggregation="seq-mean-token-mean", num_seqs=40.0)
    pg = r.grad.copy()
    rlpo.penalties.kl_penalty(logp, ref_logp, mask, estimator="low_var_kl",
                              out=r.grad, accumulate=True, coef=0.001)
    kl = rlpo.penalties.kl_penalty(logp, ref_logp, mask, estimator="low_var_kl").grad
    np.testing.assert_allclose(r.grad, pg + 0.001 * kl, rtol=1e-6, atol=1e-9)
    adv = rlpo.rollout.grpo_advantages(scores, group_size=16, preset="verl")
    adv_tokens = rlpo.rollout.broadcast_to_tokens(adv, mask)
    x = torch.from_numpy(logp).requires_grad_()
    loss = rlpo.torch.policy_loss("grpo", x, old_logp, adv_tokens, mask, aggregation="grpo")
    loss.backward()
    assert x.grad.shape == x.shape and torch.all(x.grad[torch.from_numpy(mask) == 0] == 0)
