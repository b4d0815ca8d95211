"""An evaluation from a plan: load the data, run the passes, gather the rows, write the outputs.

    plan = build_plan(["outputs/demo/sft", "outputs/demo/ppo"])
    results = run_evaluation(plan)       # the figures on rank 0 (None on the other ranks)

1. data: held-out prompts (the first `num_prompts`), held-out SFT data, shared tokenizer
2. one policy pass per model: sample, own log-probs, SFT perplexity
3. reference pass: log-probs of every sample -> KL estimates
4. reward pass: scores of every sample (and the demo's gold reward, from the text)
5. gather every rank's rows, summarise, write JSON, markdown, plot, samples
"""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional

import torch

from ..data.dataset import PromptDataset, SFTDataset
from ..engine import (GenerationSettings, barrier, broadcast_object, init_distributed, load_ds_config,
                      resolve_precision)
from ..engine.ds_config import dtype_of
from ..errors import UserError
from ..logging import get_logger
from ..models.loading import load_tokenizer, quiet_transformers
from ..trainers.data_prep import load_stage_records, split_records
from .passes import EvalContext, Samples, policy_pass, reference_pass, reward_pass, shard_rows
from .plan import DataSource, EvalPlan
from .report import write_outputs
from .summary import summarize


def _check_same_vocab(tokenizer, paths: List[str]) -> None:
    """Responses are scored as token ids by the reference and the reward model, as in PPO: one vocabulary."""
    from transformers import AutoTokenizer

    vocab = tokenizer.get_vocab()
    for path in paths:
        if AutoTokenizer.from_pretrained(path).get_vocab() != vocab:
            raise UserError(f"{path} uses a different tokenizer than {paths[0]}; the models, the reference and "
                            f"the reward model must share one vocabulary (responses are scored as token ids)")


def _records(source: DataSource, kind: str, plan: EvalPlan, log, what: str, min_eval: int = 1) -> List:
    # A dataset named as held-out data is read at its test (else validation) split; a share of a
    # training file is cut from that file's training split exactly as the training stage cut it.
    records = load_stage_records(source.path, kind, None, plan.skip_invalid, log, what,
                                 held_out=not source.held_out_share)
    if source.held_out_share:     # the same split the training stage made (same fraction, same seed)
        records = split_records(records, plan.eval_fraction, plan.seed, min_eval=min_eval)[1]
    return records


def _last_user_text(record) -> str:
    users = [m.content for m in record.messages if m.role == "user"]
    return users[-1] if users else record.messages[-1].content


def _gather(rows: List[Dict], world: int) -> List[Dict]:
    """Every rank's rows on every rank (a broadcast from each rank in turn)."""
    out: List[Dict] = []
    for src in range(world):
        out.extend(broadcast_object(rows, src=src))
    return out


def _rows(plan: EvalPlan, rows_idx, prompt_texts: List[str], samples: Dict[str, Samples], ref: Dict[str, torch.Tensor],
          scores: Dict[str, torch.Tensor], gold: Dict[str, List[Optional[float]]]) -> List[Dict]:
    """This rank's counted rows, one per model and prompt."""
    out = []
    for m in plan.models:
        s = samples[m.name]
        kl = (s.logprob_sums - ref[m.name]).tolist()
        lengths = s.rollout.action_mask.sum(dim=1).tolist()
        p = s.rollout.sequences.shape[1] - s.rollout.response_length
        for j, (prompt, counted) in enumerate(zip(rows_idx.indices, rows_idx.counted)):
            if not counted:
                continue
            ids = s.rollout.sequences[j, p:][s.rollout.action_mask[j].bool()].tolist()
            out.append({"prompt": prompt, "prompt_text": prompt_texts[prompt], "model": m.name,
                        "score": float(scores[m.name][j]), "gold": gold[m.name][j], "kl": float(kl[j]),
                        "length": int(lengths[j]), "response": s.texts[j], "response_ids": ids})
    return out


def run_evaluation(plan: EvalPlan) -> Optional[Dict]:
    """Run `plan` on every rank of the launch; returns the results on rank 0, None elsewhere."""
    t0 = time.time()
    dist = init_distributed(plan.device)
    log = get_logger("info", dist.rank)
    quiet_transformers()
    ds_config = load_ds_config(plan.ds_config)
    precision = resolve_precision(plan.dtype, dist.device)
    names = [m.name for m in plan.models]
    if len(set(names)) != len(names):
        raise UserError(f"two models share a name: {', '.join(names)}")

    # 1. data and tokenizer
    tok = load_tokenizer(plan.models[0].path)
    _check_same_vocab(tok, [m.path for m in plan.models] + [plan.reference, plan.reward_model])
    prompt_records = _records(plan.prompts, "prompt", plan, log, "eval prompts", min_eval=dist.world_size)
    if plan.num_prompts:
        prompt_records = prompt_records[:plan.num_prompts]
    prompts = PromptDataset(prompt_records, tok, plan.max_prompt_length)
    sft_eval = None
    if plan.sft_data is not None:
        sft_records = _records(plan.sft_data, "sft", plan, log, "sft eval data")
        sft_eval = SFTDataset(sft_records, tok, plan.max_length, plan.max_prompt_length)
    rows_idx = shard_rows(len(prompts), dist.rank, dist.world_size)
    settings = GenerationSettings(**plan.generation)
    ctx = EvalContext(dist=dist, ds_config=ds_config, precision=precision,
                      dtype=dtype_of(precision),
                      tokenizer=tok, settings=settings, micro=plan.batch_size, seed=plan.seed, log=log)
    log.info(f"evaluate: {', '.join(names)} on {len(prompts)} prompts ({plan.prompts.describe()}), "
             f"{dist.world_size} rank(s); reward model {plan.reward_model}, reference {plan.reference}")

    # 2. one policy pass per model
    samples: Dict[str, Samples] = {}
    perplexity: Dict[str, Optional[Dict[str, float]]] = {}
    for m in plan.models:
        samples[m.name], perplexity[m.name] = policy_pass(ctx, m.name, m.path, prompts, rows_idx, sft_eval)
        log.info(f"evaluate: sampled {m.name}")
    # 3. reference log-probs, 4. reward-model scores and gold reward
    ref = reference_pass(ctx, plan.reference, samples)
    scores = reward_pass(ctx, plan.reward_model, samples)
    gold: Dict[str, List[Optional[float]]] = {}
    for name, s in samples.items():
        if plan.gold:
            from ..tasks import gold_rewards
            gold[name] = gold_rewards([_last_user_text(prompt_records[i]) for i in rows_idx.indices], s.texts)
        else:
            gold[name] = [None] * len(s.texts)

    # 5. gather, summarise, write
    prompt_texts = [prompts[i].text for i in range(len(prompts))]
    rows = _gather(_rows(plan, rows_idx, prompt_texts, samples, ref, scores, gold), dist.world_size)
    results = None
    if dist.is_main:
        results = {
            "models": summarize(rows, names, plan.baseline, plan.tie_margin, perplexity),
            "model_order": names,
            "model_paths": {m.name: m.path for m in plan.models},
            "baseline": plan.baseline,
            "reference": plan.reference,
            "reward_model": plan.reward_model,
            "prompts": plan.prompts.describe(),
            "num_prompts": len(prompts),
            "sft_data": plan.sft_data.describe() if plan.sft_data else None,
            "gold": plan.gold,
            "generation": dataclasses.asdict(settings),
            "seed": plan.seed,
            "tie_margin": plan.tie_margin,
            "world_size": dist.world_size,
            "wall_time_s": time.time() - t0,
        }
        results["files"] = write_outputs(results, rows, plan.out_dir)
        log.info(f"evaluate: wrote {', '.join(results['files'].values())}")
    barrier()
    return results
