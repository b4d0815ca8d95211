"""The model passes of an evaluation, one engine alive at a time, on this rank's share of the prompts.

    policy pass (each model)   sample responses (hybrid engine: gathered once, KV cache), their log-probs
                               under the model itself, perplexity on the held-out SFT data
    reference pass             log-probs of every model's responses under the reference policy
    reward pass                reward-model score of every model's responses

Every engine is a ZeRO-3 inference engine when the DeepSpeed config says ZeRO-3, so a model
that does not fit on one device is still evaluated. Forwards of ZeRO-3 engines are collective:
every rank holds the same number of prompt rows (a rank short of prompts repeats its first one,
uncounted), hence runs the same number of forwards.

KL to the reference is estimated from the model's own samples: for a response y ~ pi(. | x),
log pi(y | x) - log pi_ref(y | x) summed over its tokens is an unbiased estimate of the sequence
KL(pi || pi_ref) (the k1 estimator of Schulman, "Approximating KL divergence", 2020). Both
log-probs are taken at the sampling temperature, as PPO's KL penalty is; with top_p < 1 or
top_k > 0 the samples come from a truncated distribution and the estimate is of that one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..data.dataset import PromptDataset, SFTDataset
from ..engine import DistInfo, GenerationSettings, HybridEngine, build_inference_engine
from ..models.loading import load_causal_lm, load_scalar_model
from ..models.policy import PolicyModel
from ..models.scalar_head import ScalarHeadModel
from ..trainers.ops import token_ops
from ..trainers.rl_sampling import Rollout, generate_rollout
from ..trainers.sft import evaluate_sft


@dataclass
class EvalContext:
    dist: DistInfo
    ds_config: Dict
    precision: str
    dtype: torch.dtype
    tokenizer: object
    settings: GenerationSettings
    micro: int                      # rows per forward / generate call
    seed: int
    log: logging.Logger


@dataclass
class PromptRows:
    """This rank's prompt rows: dataset indices, padded to the same count on every rank."""
    indices: List[int]
    counted: List[bool]             # False on padding rows (a repeat of another row)


def shard_rows(n: int, rank: int, world: int) -> PromptRows:
    """Rows rank, rank + world, ... of `n`, padded with repeats to ceil(n / world) on every rank."""
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    pad = per_rank - len(mine)
    return PromptRows(mine + [mine[0] if mine else 0] * pad, [True] * len(mine) + [False] * pad)


@dataclass
class Samples:
    """One model's responses to this rank's prompt rows (CPU tensors)."""
    rollout: Rollout
    logprob_sums: torch.Tensor      # (B,) sum over response tokens of log pi(token), at the sampling temperature
    texts: List[str]                # (B,) decoded responses, special tokens dropped


def _policy_factory(ctx: EvalContext, path: str) -> Callable[[], PolicyModel]:
    return lambda: PolicyModel(load_causal_lm(path, ctx.dtype, ctx.tokenizer), token_ops("auto"))


def _engine(ctx: EvalContext, name: str, factory):
    return build_inference_engine(name, factory, ctx.ds_config, micro_batch_size=ctx.micro,
                                  precision=ctx.precision, seed=ctx.seed)


@torch.no_grad()
def _logprob_sums(engine, rollout: Rollout, ctx: EvalContext) -> torch.Tensor:
    out = []
    for part in rollout.split(ctx.micro):
        part = part.to(engine.device)
        lp = engine(part.sequences, part.attention_mask, num_scored=part.response_length,
                    temperature=ctx.settings.temperature)["logprobs"]
        out.append((lp * part.action_mask).sum(dim=1).double().cpu())
    return torch.cat(out)


def decode(tokenizer, rollout: Rollout) -> List[str]:
    p = rollout.sequences.shape[1] - rollout.response_length
    return [tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
            for ids, mask in zip(rollout.sequences[:, p:], rollout.action_mask)]


@torch.no_grad()
def policy_pass(ctx: EvalContext, name: str, path: str, prompts: PromptDataset, rows: PromptRows,
                sft_eval: Optional[SFTDataset]) -> Tuple[Samples, Optional[Dict[str, float]]]:
    """Sample from the model at `path`, score its samples under itself, and its held-out SFT perplexity."""
    engine = _engine(ctx, f"eval:{name}", _policy_factory(ctx, path))
    try:
        engine.eval()
        batch = prompts.collate([prompts[i] for i in rows.indices]).to(engine.device)
        tok = ctx.tokenizer
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        # Every model draws from the same random stream, so differences between them are not a matter
        # of which seed each happened to get.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(ctx.seed + ctx.dist.rank)
            rollout = generate_rollout(engine, HybridEngine(engine), batch.input_ids, batch.attention_mask,
                                       ctx.settings, tok.eos_token_id, tok.pad_token_id, ctx.micro).to("cpu")
        samples = Samples(rollout, _logprob_sums(engine, rollout, ctx), decode(tok, rollout))
        ppl = evaluate_sft(engine, sft_eval, ctx.micro, ctx.dist) if sft_eval is not None else None
    finally:
        engine.destroy()
    return samples, ppl


def reference_pass(ctx: EvalContext, path: str, samples: Dict[str, Samples]) -> Dict[str, torch.Tensor]:
    """Log-prob sums of every model's responses under the reference policy at `path`."""
    engine = _engine(ctx, "eval:reference", _policy_factory(ctx, path))
    try:
        engine.eval()
        return {name: _logprob_sums(engine, s.rollout, ctx) for name, s in samples.items()}
    finally:
        engine.destroy()


@torch.no_grad()
def reward_pass(ctx: EvalContext, path: str, samples: Dict[str, Samples]) -> Dict[str, torch.Tensor]:
    """Reward-model scores `(B,)` of every model's responses (read at each row's last real token)."""
    engine = _engine(ctx, "eval:reward", lambda: ScalarHeadModel(load_scalar_model(path, ctx.dtype, ctx.tokenizer)))
    try:
        engine.eval()
        out = {}
        for name, s in samples.items():
            parts = [engine(p.sequences.to(engine.device), p.attention_mask.to(engine.device))["scores"].double().cpu()
                     for p in s.rollout.split(ctx.micro)]
            out[name] = torch.cat(parts)
        return out
    finally:
        engine.destroy()
