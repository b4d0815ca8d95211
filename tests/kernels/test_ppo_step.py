"""One PPO step on a tiny model gives the same losses and gradients with every backend.

The step uses each op the way a trainer does: policy and old log-probs from logits
views (`gather_logprobs`, with entropy), reference log-probs through the LM head
(`fused_linear_logprobs`), KL-shaped rewards, GAE, then the clipped policy loss, the
value loss and an entropy bonus, and one backward. `use_backend("reference")` (what
a trainer's `use_kernels: reference` sets) must reproduce the default path.
"""
import pytest
import torch
from torch import nn

import rlhf_kernels
from rlhf_kernels import fused_linear_logprobs, gae, gather_logprobs, kl_shaped_rewards


class TinyPolicy(nn.Module):
    def __init__(self, vocab=29, hidden=12, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.value = nn.Linear(hidden, 1)

    def hidden(self, ids):
        x = self.embed(ids)
        return torch.tanh(self.mix(x.cumsum(1) / torch.arange(1, ids.shape[1] + 1).view(1, -1, 1)))


def _batch(B=3, T=10, P=4, vocab=29, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=gen)
    mask = torch.zeros(B, T - 1, dtype=torch.bool)  # over the T - 1 predicted tokens
    mask[:, P - 1:] = True
    mask[0, 7:] = False    # a short response
    mask[2, 5] = False     # a hole (e.g. tool output)
    return ids, mask, torch.randn(B, generator=gen)


def ppo_step(backend):
    policy, ref = TinyPolicy(seed=0), TinyPolicy(seed=1)
    with torch.no_grad():  # the policy has moved since the rollout: ratios differ from 1
        behaviour = TinyPolicy(seed=0)
        for p in behaviour.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, mask, scores = _batch()
    targets, temperature = ids[:, 1:], 0.9
    with rlhf_kernels.use_backend(backend):
        with torch.no_grad():  # 1.-4. rollout side
            h_old = behaviour.hidden(ids)
            old_logprobs = gather_logprobs(behaviour.head(h_old)[:, :-1], targets, temperature)
            ref_logprobs = fused_linear_logprobs(ref.hidden(ids)[:, :-1], ref.head.weight, targets, temperature)
            old_values = behaviour.value(h_old).squeeze(-1)[:, :-1]
            rewards, kl = kl_shaped_rewards(scores, old_logprobs, ref_logprobs, mask, 0.05, "k3")
            advantages, returns = gae(rewards, old_values, mask, 0.99, 0.95)
            n = mask.sum()
            mean = (advantages * mask).sum() / n
            std = (((advantages - mean) * mask).square().sum() / n).sqrt()
            advantages = torch.where(mask, (advantages - mean) / (std + 1e-8), 0.0)
        # 5. one PPO minibatch
        h = policy.hidden(ids)
        logits = policy.head(h)
        logprobs, entropy = gather_logprobs(logits[:, :-1], targets, temperature, return_entropy=True)
        ratio = torch.exp(logprobs - old_logprobs)
        pg = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2))
        values = policy.value(h).squeeze(-1)[:, :-1]
        v_clipped = old_values + (values - old_values).clamp(-0.2, 0.2)
        vf = torch.maximum((values - returns).square(), (v_clipped - returns).square())
        n = mask.sum()
        losses = {"policy": (pg * mask).sum() / n, "value": 0.5 * (vf * mask).sum() / n,
                  "entropy": (entropy * mask).sum() / n, "kl": (kl * mask).sum() / n}
        total = losses["policy"] + 0.5 * losses["value"] - 0.01 * losses["entropy"]
        total.backward()
    grads = {name: p.grad.clone() for name, p in policy.named_parameters()}
    return {k: v.detach() for k, v in losses.items()}, grads, advantages


def _assert_same(a, b):
    losses_a, grads_a, adv_a = a
    losses_b, grads_b, adv_b = b
    for k in losses_a:
        torch.testing.assert_close(losses_a[k], losses_b[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(adv_a, adv_b, rtol=1e-4, atol=1e-5)
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_ppo_step_same_with_reference_and_default():
    reference = ppo_step("reference")
    assert reference[0]["policy"] != 0 and reference[0]["kl"] != 0
    _assert_same(ppo_step("auto"), reference)   # CPU: the memory-efficient torch paths


@pytest.mark.triton_interp
def test_ppo_step_same_with_triton_kernels():
    _assert_same(ppo_step("triton"), ppo_step("reference"))
