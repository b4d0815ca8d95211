"""model.fused_lm_head scores what the model's own forward scores, or refuses the model.

The fused path computes log-probs from `hidden @ W.T`; a model that post-processes its logits
(Gemma-2's soft-cap, Cohere's and Granite's logit scaling) is either reproduced exactly there or
refused with a one-line message that names the config attribute.
"""
import pytest
import torch

from rlhf_ds.config import ConfigError
from rlhf_ds.models.policy import PolicyModel

# transformers' model classes are imported inside the functions (see test_generation_copy.py).

VOCAB = 48
SHAPE = dict(hidden_size=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
             head_dim=16, vocab_size=VOCAB, initializer_range=0.3, tie_word_embeddings=False, pad_token_id=0)


def build(arch, **overrides):
    import transformers

    config = getattr(transformers, f"{arch}Config")(**{**SHAPE, **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return getattr(transformers, f"{arch}ForCausalLM")(config).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0          # left padding
    return ids, mask


def both_paths(model, temperature, **kwargs):
    ids, mask = batch()
    out = []
    for fused in (False, True):
        policy = PolicyModel(model, fused_head=fused)
        res = policy(ids, mask, num_scored=6, temperature=temperature, with_entropy=True, **kwargs)
        out.append(res)
    return out


def test_gemma2_softcap_is_refused_by_name():
    model = build("Gemma2", final_logit_softcapping=5.0)
    with pytest.raises(ConfigError) as err:
        PolicyModel(model, fused_head=True)
    msg = str(err.value)
    assert "final_logit_softcapping=5.0" in msg and "model.fused_lm_head" in msg and "\n" not in msg
    PolicyModel(model, fused_head=False)     # the unfused path applies the soft-cap itself


def test_gemma2_without_softcap_matches():
    model = build("Gemma2", final_logit_softcapping=None)
    plain, fused = both_paths(model, 0.7)
    torch.testing.assert_close(fused["logprobs"], plain["logprobs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(fused["entropy"], plain["entropy"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,overrides", [
    ("Cohere", dict(logit_scale=0.25)),          # logits * logit_scale
    ("Granite", dict(logits_scaling=4.0)),       # logits / logits_scaling
], ids=["cohere_logit_scale", "granite_logits_scaling"])
@pytest.mark.parametrize("min_new_tokens", [0, 2])
def test_scaled_logits_match(arch, overrides, min_new_tokens):
    model = build(arch, **overrides)
    kwargs = dict(min_new_tokens=min_new_tokens, eos_token_id=5) if min_new_tokens else {}
    plain, fused = both_paths(model, 0.7, **kwargs)
    torch.testing.assert_close(fused["logprobs"], plain["logprobs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(fused["entropy"], plain["entropy"], atol=1e-5, rtol=0)


def test_scaled_logits_same_gradient():
    """The scale folded into the temperature also gives the model's own gradient."""
    model = build("Granite", logits_scaling=4.0)
    ids, mask = batch()
    grads = []
    for fused in (False, True):
        model.zero_grad()
        PolicyModel(model, fused_head=fused)(ids, mask, num_scored=6)["logprobs"].sum().backward()
        grads.append(model.lm_head.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_unknown_scaling_attribute_is_refused():
    """A scaling attribute on a model type whose use of it is not known: refuse, don't guess."""
    model = build("Llama")
    model.config.logits_scaling = 2.0
    with pytest.raises(ConfigError, match="logits_scaling=2.0"):
        PolicyModel(model, fused_head=True)
