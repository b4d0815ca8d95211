"""The two model loaders (plain, and with adapters) share their set-up: gradient checkpointing
changes no gradient, with or without adapters, and a scalar model without a pad id is refused."""
import json
import os
import shutil

import pytest
import torch

from rlhf_ds.models.loading import load_causal_lm, load_scalar_model
from rlhf_ds.models.lora import load_lm

from .conftest import lora


def _grads(model, ids):
    model.train()
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("with_adapters", [False, True])
def test_gradient_checkpointing_leaves_gradients_unchanged(base_dir, with_adapters):
    def load(ckpt):
        torch.manual_seed(0)                  # the same adapter init in both loads
        if with_adapters:
            return load_lm(base_dir, "actor", lora(r=4), gradient_checkpointing=ckpt)
        return load_causal_lm(base_dir, gradient_checkpointing=ckpt)

    ids = torch.randint(5, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    plain, ckpt = load(False), load(True)
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    assert ckpt.config.use_cache is False
    if with_adapters:   # only the adapters train; the embedding output needs no grad for them to get one
        assert not plain.get_input_embeddings().weight.requires_grad
    a, b = _grads(plain, ids), _grads(ckpt, ids)
    assert a.keys() == b.keys() and len(a) > 0
    # lora_A gets no gradient yet: lora_B starts at zero. Everything else must get one.
    reached = [n for n, g in b.items() if "lora_A" not in n]
    assert reached and all(float(b[n].abs().max()) > 0 for n in reached), "a parameter got no gradient"
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-6, msg=n)


def test_scalar_model_without_pad_id_is_refused(base_dir, tmp_path):
    d = str(tmp_path / "nopad")
    shutil.copytree(base_dir, d)
    cfg_path = os.path.join(d, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["pad_token_id"] = None
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="nopad: the reward model has no pad_token_id"):
        load_scalar_model(d)
