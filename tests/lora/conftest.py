"""LoRA / QLoRA tests: real peft adapters, real bitsandbytes 4-bit layers (its CPU backend), real
DeepSpeed engines on one rank in this process (gloo)."""
import os

import pytest
import torch

from rlhf_ds.engine import build_train_engine, init_distributed
from rlhf_ds.lora_settings import LoRASettings

ZERO = {s: {"zero_optimization": {"stage": s}} for s in (0, 1, 2, 3)}


@pytest.fixture(scope="session")
def dist():
    return init_distributed("cpu")


@pytest.fixture(scope="session")
def base_dir(demo_task):
    """The demo's tiny LLaMA (hidden 128, 4 blocks, GQA) and its tokenizer."""
    return os.path.join(demo_task, "base_model")


@pytest.fixture(scope="session")
def reward_dir(base_dir, tmp_path_factory):
    """A reward model: the base as a sequence classifier with a seeded random `score` head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = str(tmp_path_factory.mktemp("reward") / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(3)))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def lora(quantization="none", r=4, **kw) -> LoRASettings:
    kw.setdefault("apply_to", frozenset({"sft", "reward", "actor", "critic"}))
    return LoRASettings(r=r, alpha=8.0, quantization=quantization, **kw)


def train_engine(name, factory, stage, lr=5e-2, lr_overrides=None):
    return build_train_engine(name, factory, ZERO[stage], micro_batch_size=2, grad_accum=1, precision="fp32",
                              gradient_clipping=1.0, lr=lr, weight_decay=0.0, total_steps=100, warmup_steps=0,
                              schedule="constant", lr_overrides=lr_overrides)


def batch(vocab=600, rows=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0                       # a left-padded row
    return ids, mask
