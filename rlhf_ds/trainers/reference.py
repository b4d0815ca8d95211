"""The reference policy of offline preference training (DPO, KTO), three ways, and response log-probs.

    engine        a ZeRO-3 inference engine holding the SFT model (partitioned like the trained one)
    actor         the trained policy with its LoRA adapters disabled: with LoRA/QLoRA on a frozen base
                  (lora.reference_from_actor) the base IS the SFT model, so no second copy is held
    precomputed   dpo.precompute_reference: one pass over the training and held-out data computes every
                  response's reference log-prob before training, stores them beside the checkpoints
                  (checkpoints/dpo_reference/<key>.pt) and frees the reference; the key hashes the
                  tokenized data, the model's files and the precision, so a changed file or model is
                  never reused
    none          reference-free losses (SimPO)
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Optional, Tuple

import torch

from ..engine import all_reduce_sum, barrier, broadcast_object, build_inference_engine
from ..models.policy import PolicyModel
from .common import RunContext, eval_batches
from .lora_setup import ReferenceFromActor, causal_lm, lora_settings
from .ops import token_ops

REFERENCE_DIR = "dpo_reference"     # under save_dir/checkpoints/, beside (not inside) the stage's checkpoints


def response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   action_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """`(N,)` summed log-probs of the response tokens (action_mask) of each row, and `(N,)` their counts.

    Rows are right-padded `(N, T)`; only the positions from the first response token of the batch on
    are scored (the prompt's logits are never computed)."""
    t = input_ids.shape[1]
    any_action = action_mask.bool().any(dim=0)
    start = max(1, int(any_action.float().argmax())) if bool(any_action.any()) else t - 1
    lp = model(input_ids, attention_mask, num_scored=t - start)["logprobs"]          # (N, T - start)
    mask = action_mask[:, start:].bool()
    return torch.where(mask, lp, torch.zeros_like(lp)).sum(dim=1), mask.sum(dim=1)


def reference_mode(ctx: RunContext, reference_free: bool) -> str:
    """none, actor, precomputed or engine (see the module docstring), from the loss and the config."""
    if reference_free:
        return "none"
    if lora_settings(ctx.cfg).reference_is_actor:
        return "actor"
    return "precomputed" if ctx.cfg.dpo.precompute_reference else "engine"


def reference_engine(ctx: RunContext, sft_path: str, micro: int):
    """The SFT model as a frozen inference engine (ZeRO-3 partitioned under a ZeRO-3 config)."""
    cfg = ctx.cfg
    ops = token_ops(cfg.ppo.use_kernels)
    return build_inference_engine(
        "reference",
        lambda: PolicyModel(causal_lm(ctx, sft_path, "reference"), ops, fused_head=cfg.model.fused_lm_head),
        ctx.ds_config, micro_batch_size=micro, precision=ctx.precision, offload_params=cfg.deepspeed.offload_inference,
        seed=cfg.seed)


class LiveReference:
    """Reference log-probs computed when asked: from its own engine, or from the actor without adapters."""

    def __init__(self, engine=None):
        self.engine = engine

    def model(self, actor):
        return self.engine if self.engine is not None else ReferenceFromActor(actor)

    @torch.no_grad()
    def logps(self, actor, input_ids, attention_mask, action_mask) -> torch.Tensor:
        return response_logps(self.model(actor), input_ids, attention_mask, action_mask)[0]

    def destroy(self) -> None:
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None


# ---------------------------------------------------------------------------- precomputed

def model_fingerprint(path: str) -> str:
    """sha256 of a model directory's top-level files (names and bytes); of the name for a hub id."""
    h = hashlib.sha256()
    if not os.path.isdir(path):
        h.update(f"hub:{path}".encode())
        return h.hexdigest()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        h.update(name.encode() + b"\0")
        with open(full, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def data_fingerprint(*datasets) -> str:
    """sha256 of the tokenized rows, in order (the order indexes the stored log-probs)."""
    h = hashlib.sha256()
    for ds in datasets:
        h.update(f"dataset {len(ds)}\0".encode())
        for i in range(len(ds)):
            h.update(json.dumps(ds.fingerprint_row(i)).encode())
    return h.hexdigest()


@torch.no_grad()
def _all_rows(ctx: RunContext, model, dataset, micro: int, width: int) -> torch.Tensor:
    """`(len(dataset), width)` reference log-probs of every row's responses, on every rank: each rank
    computes its share (eval_batches), the others' entries stay 0, and a sum over ranks fills them in."""
    out = torch.zeros(len(dataset), width, dtype=torch.float64)
    if len(dataset) == 0:
        return out
    for batch, counted in eval_batches(dataset, micro, ctx.dist, model.device):
        b, k, t = batch.input_ids.shape
        lp, _ = response_logps(model, batch.input_ids.view(b * k, t), batch.attention_mask.view(b * k, t),
                               batch.action_mask.view(b * k, t))
        if counted:
            out[batch.rows.cpu()] = lp.view(b, k).double().cpu()
    return all_reduce_sum(out)


def precompute_reference(ctx: RunContext, sft_path: str, datasets: Dict[str, object], micro: int,
                         width: int, build: Optional[Callable[[], object]] = None) -> Dict[str, torch.Tensor]:
    """Each dataset's `(N, width)` reference log-probs, read from save_dir/checkpoints/dpo_reference/<key>.pt
    when that file exists, else computed with a reference engine that is freed afterwards (`build`, default
    `reference_engine`) and stored there. The key covers the tokenized data, the model's files, the precision
    and the log-prob path, so that nothing computed for other data or another model is reused."""
    cfg, log = ctx.cfg, ctx.log
    names = sorted(datasets)
    key = None
    if ctx.is_main:
        h = hashlib.sha256()
        for part in (data_fingerprint(*(datasets[n] for n in names)), model_fingerprint(sft_path), ctx.precision,
                     f"fused_head={cfg.model.fused_lm_head}", f"lora={lora_settings(cfg).quantization}"):
            h.update(part.encode() + b"\0")
        key = h.hexdigest()[:32]
    key = broadcast_object(key)
    path = os.path.join(cfg.save_dir, "checkpoints", REFERENCE_DIR, f"{key}.pt")
    if os.path.isfile(path):
        stored = torch.load(path, weights_only=True)
        log.info(f"dpo: reference log-probs read from {path} (same data and model)")
        return {n: stored[n] for n in names}
    log.info(f"dpo: computing the reference log-probs of {', '.join(f'{len(datasets[n])} {n}' for n in names)} "
             f"records once, before training")
    engine = (build or (lambda: reference_engine(ctx, sft_path, micro)))()
    engine.eval()
    result = {n: _all_rows(ctx, engine, datasets[n], micro, width) for n in names}
    engine.destroy()
    if ctx.is_main:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(result, tmp)
        os.replace(tmp, path)             # a crash never leaves a torn file under the final name
    barrier()
    log.info(f"dpo: reference log-probs stored in {path}; the reference model is freed")
    return result
