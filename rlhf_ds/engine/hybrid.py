"""Hybrid engine: switch the actor from ZeRO-3 training to fast generation and back.

Why: under ZeRO-3, `generate` all-gathers every layer for every new token, and even
inside `GatheredParameters` ZeRO's module hooks run on every module at every token
(measured here: 13.4 s and 11.1 s against 1.3 s for the same weights as a plain module).
DeepSpeed's own hybrid engine avoids this only for a fixed list of architectures and
breaks under ZeRO-3. Ours works for any Hugging Face causal LM:

1. build an empty, hook-free copy of the architecture on the meta device (no memory),
2. gather the ZeRO-3 shards bucket by bucket (`hybrid.gather_bucket_mb` bounds the
   temporary all-gather memory) and copy each into the copy; LoRA adapters are merged
   into the copied weights where the base is not quantised (`merged_lora_copy`),
3. generate with the KV cache from left-padded prompts,
4. drop the copy (unless `keep_gathered`), so training gets its memory back.

Below ZeRO-3 each rank already holds whole weights and no hook runs per token, so the
engine's own module generates directly (in eval mode, then back to train).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..models.policy import unwrap
from .engines import Engine
from .generation_copy import empty_copy, release_storage  # noqa: F401 (empty_copy: public here too)
from .lora_hybrid import merged_lora_copy


@dataclass
class GenerationSettings:
    """Sampling settings (mirrors the run config's `generation` section)."""
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True


def sampling_config(settings: GenerationSettings, eos_token_id: int, pad_token_id: int):
    """A `transformers.GenerationConfig` that states every choice of the sampling distribution.

    Held as the model's only generation config (`_only_generation_config`), it lets `generate` run no
    logits processor beyond temperature, top-k and top-p as given and `min_new_tokens`' EOS
    suppression (which PolicyModel can apply when scoring); top_k=0 is stated as 0, since an unset
    top_k falls back to transformers' default of 50."""
    from transformers import GenerationConfig

    # Greedy: no sampling flag at all (generate applies none without do_sample, and warns about any).
    warpers = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k) \
        if settings.do_sample else {}
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens, do_sample=settings.do_sample,
        num_beams=1, num_return_sequences=1, use_cache=True, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        **warpers)


@contextlib.contextmanager
def _only_generation_config(model, config):
    """`generate` fills every field the given config leaves unset from the model's own
    `generation_config` (repetition_penalty, min_p, no_repeat_ngram_size, bad_words_ids, ...: fields
    whose neutral value is None cannot be overridden), and `save_pretrained` carries those from a base
    model through the SFT export into PPO. Samples drawn under them are not the policy being scored,
    so the model holds `config` alone while it generates."""
    hf = unwrap(model)   # a peft model's generate reads the base model's generation_config
    saved = hf.generation_config
    hf.generation_config = config
    try:
        yield
    finally:
        hf.generation_config = saved


def hf_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
                eos_token_id: int, pad_token_id: int, synced_gpus: bool = False, return_scores: bool = False):
    """`model.generate` with our settings and nothing else (`sampling_config`); returns `(B, P + R)`
    token ids (R <= max_new_tokens), right-padded with `pad_token_id` after EOS. With `return_scores`,
    also the `(B, R, V)` logits the sampler drew from (after every processor, temperature included)."""
    config = sampling_config(settings, eos_token_id, pad_token_id)
    config.output_scores = config.return_dict_in_generate = return_scores
    with torch.no_grad(), _only_generation_config(model, config):
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                             synced_gpus=synced_gpus)
    return (out.sequences, torch.stack(out.scores, dim=1)) if return_scores else out


class HybridEngine:
    """Generation mode for a training engine that holds a causal LM.

    Args:
        engine: the actor's training engine; `engine.module.lm` must be the Hugging Face model
            (a `PreTrainedModel`, or a peft model around one).
        bucket_mb: gather shards in groups of about this many MB (0: all at once).
        keep_gathered: keep the generation copy between calls (refreshed from the shards each time).
        merge_fn: `(engine, copy or None, bucket_mb) -> copy`: builds the generation model and fills
            it from the shards. Default `merged_lora_copy` (lora_hybrid.py): every weight gathered
            as it is, LoRA-adapted layers fused to W + s * B @ A.
    """

    def __init__(self, engine: Engine, bucket_mb: float = 0.0, keep_gathered: bool = False,
                 merge_fn: Optional[Callable] = None):
        self.engine = engine
        self.bucket_mb = bucket_mb
        self.keep_gathered = keep_gathered
        self.merge_fn = merge_fn or merged_lora_copy
        self._plain = None
        self.last_gather_s = 0.0
        self.last_generate_s = 0.0

    @property
    def lm(self):
        return self.engine.module.lm

    @contextlib.contextmanager
    def generation_model(self):
        """Yield a model ready for `generate` (eval mode, no hooks); restore training mode after."""
        was_training = self.engine.module.training
        self.engine.eval()
        try:
            if self.engine.zero_stage < 3:
                self.last_gather_s = 0.0
                yield self.lm
            else:
                t0 = time.perf_counter()
                plain = self._materialise()
                self.last_gather_s = time.perf_counter() - t0
                try:
                    yield plain
                finally:
                    if not self.keep_gathered:
                        self._plain = None
                        release_storage(plain)
                        del plain
                        if torch.cuda.is_available():
                            torch.cuda.empty_cache()
        finally:
            if was_training:
                self.engine.train()

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
                 eos_token_id: int, pad_token_id: int) -> torch.Tensor:
        """Sample responses for left-padded prompts `(B, P)`; returns `(B, P + R)`."""
        with self.generation_model() as model:
            t0 = time.perf_counter()
            out = hf_generate(model, input_ids, attention_mask, settings, eos_token_id, pad_token_id)
            self.last_generate_s = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ internals
    def _materialise(self):
        """A hook-free copy of the actor with full (gathered) weights on this rank's device."""
        self._plain = self.merge_fn(self.engine, self._plain, self.bucket_mb)
        return self._plain
