"""KTO on the stage loop: preference optimisation from unpaired examples (rl/kto.py), dpo.loss_type=kto.

1. data: unpaired {prompt, completion, label} records; preference pairs are split into their chosen
   (desirable) and rejected (undesirable) responses (as TRL's unpair_preference_dataset does). Each
   example also carries the next example's completion to its prompt, for the KL estimate.
2. policy and reference as for DPO (trainers/dpo.py, reference.py)
3. per global batch: the reference point z0 = max(0, mean log-ratio of the mismatched completions) over
   the whole batch on all ranks (no gradient); per micro-batch: the completions' log-ratios and the
   loss over the global example count
4. evaluation on held-out examples: loss, z0, implicit rewards of desirable and undesirable examples,
   accuracy (an example is scored right when its reward is on its label's side of z0); the best model
   by eval loss is exported to `dpo/`
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..data.records import PreferenceRecord, RankingRecord, UnpairedRecord
from ..engine import all_reduce_sum
from ..errors import DataError
from ..rl import kto_loss, kto_reference_point
from .common import RunContext, eval_batches, plan_batches
from .data_prep import report_truncation, train_eval_records
from .dpo import ALGORITHM, References, held_out_hooks, policy_model
from .preference_data import ResponsesDataset, kl_rows
from .reference import response_logps
from .stage_loop import Stage, run_stage


def unpaired(records, what: str) -> List[UnpairedRecord]:
    """Unpaired records as they are; a pair (or a ranking of two) as its chosen and its rejected example."""
    out = []
    for r in records:
        if isinstance(r, UnpairedRecord):
            out.append(r)
        elif isinstance(r, PreferenceRecord) or (isinstance(r, RankingRecord) and len(r.responses) == 2
                                                 and r.ranks[0] < r.ranks[1]):
            chosen, rejected = (r.chosen, r.rejected) if isinstance(r, PreferenceRecord) else r.responses
            out += [UnpairedRecord(r.prompt, chosen, True), UnpairedRecord(r.prompt, rejected, False)]
        else:
            raise DataError(f"{what}: dpo.loss_type=kto trains on unpaired {{prompt, completion, label}} records or "
                            f"on preference pairs, not on {type(r).__name__}s (give dpo.data_format=kto for "
                            f"unpaired data)")
    return out


def completion_logps(model, batch, column: int) -> torch.Tensor:
    """`(B,)` summed log-probs of response `column` of each row (0: the completion, 1: the mismatched one)."""
    return response_logps(model, batch.input_ids[:, column], batch.attention_mask[:, column],
                          batch.action_mask[:, column])[0]


def kto_stage(ctx: RunContext, sft_path: str, data_path: str, eval_prompt_path: Optional[str] = None) -> Stage:
    cfg, c, log = ctx.cfg, ctx.cfg.dpo, ctx.log
    # 1. data
    kind = "unpaired" if c.data_format == "kto" else ("preference" if c.data_format != "auto" else None)
    train_recs, eval_recs = train_eval_records(data_path, c.eval_path, kind, c.data_format, cfg.data.skip_invalid,
                                               cfg.data.eval_fraction, cfg.seed, log, "kto data")
    train_recs, eval_recs = unpaired(train_recs, data_path), unpaired(eval_recs, c.eval_path or data_path)
    datasets = {name: ResponsesDataset(kl_rows(recs), ctx.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length,
                                       k=2, desirable=[r.desirable for r in recs])
                for name, recs in (("train", train_recs), ("eval", eval_recs))}
    train_ds, eval_ds = datasets["train"], datasets["eval"]
    report_truncation(train_ds, log, "kto train")
    share = sum(r.desirable for r in train_recs) / max(1, len(train_recs))
    log.info(f"kto: {100 * share:.0f}% of the training examples are desirable (lambda_D {c.kto_desirable_weight}, "
             f"lambda_U {c.kto_undesirable_weight}; the paper keeps lambda_D n_D / (lambda_U n_U) in [1, 4/3])")
    # 2. reference
    micro = plan_batches(c.batch_size, c.micro_batch_size, ctx.dist.world_size, "dpo").micro
    refs = References(ctx, sft_path, datasets, micro, reference_free=False)

    # 3. the reference point over the whole global batch, then the loss per micro-batch
    @torch.no_grad()
    def prepare(engine, batch):
        if batch.ref_logps is None:                    # live reference: both columns, once per batch
            batch.ref_logps = torch.cat([refs.logps(engine, part) for part in batch.split(micro)])
        kl_sum = sum(float((completion_logps(engine, part, 1) - part.ref_logps[:, 1]).sum())
                     for part in batch.split(micro))
        return {"z0": kto_reference_point(all_reduce_sum(torch.tensor(kl_sum, dtype=torch.float64)), c.batch_size),
                "examples": float(c.batch_size)}

    def loss(engine, part, prepared):
        policy = completion_logps(engine, part, 0)
        value, stats = kto_loss(policy, part.ref_logps[:, 0], part.desirable, prepared["z0"], c.beta,
                                c.kto_desirable_weight, c.kto_undesirable_weight, num_examples=c.batch_size)
        n = part.input_ids.shape[0]
        return value, {**{k: float(v) for k, v in stats.items()}, "kl": float(prepared["z0"]) * n,
                       "logps": float(policy.detach().sum())}

    def figures(means: Dict[str, float]) -> Dict[str, float]:
        return {"kl": means["kl"], "logps": means["logps"], "desirable_share": means["num_desirable"],
                "rewards_desirable": means["rewards_desirable_sum"] / max(means["num_desirable"], 1e-12),
                "rewards_undesirable": means["rewards_undesirable_sum"] / max(means["num_undesirable"], 1e-12)}

    def result(steps, best):
        return {"algorithm": ALGORITHM["kto"], "dpo_steps": steps,
                "gold_reward_sft": stage.state.get("gold_reward_sft"), **{f"dpo_{k}": v for k, v in best.items()}}

    start, finish = held_out_hooks(ctx, refs, eval_prompt_path, micro, lambda: stage)
    stage = Stage(schedule=c, train_data=train_ds, eval_data=eval_ds, model=policy_model(ctx, sft_path), loss=loss,
                  prepare=prepare, rate="examples", figures=figures,
                  evaluate=lambda engine, m: evaluate_kto(ctx, engine, refs, eval_ds, m),
                  metric="eval_loss", higher_is_better=False, result=result, start=start, finish=finish,
                  describe=f", loss kto, beta {c.beta}, reference: {refs.describe()}")
    return stage


@torch.no_grad()
def evaluate_kto(ctx: RunContext, engine, refs: References, dataset: ResponsesDataset, micro: int) -> Dict[str, float]:
    """Over every held-out example (all ranks), with z0 estimated on the whole held-out set."""
    c = ctx.cfg.dpo
    engine.eval()
    ratios, kl_sum, desirable = [], 0.0, []
    for batch, counted in eval_batches(dataset, micro, ctx.dist, engine.device):
        policy = torch.stack([completion_logps(engine, batch, 0), completion_logps(engine, batch, 1)], dim=1)
        ref = refs.logps(engine, batch)
        if counted:
            r = (policy - ref).double().cpu()
            ratios.append(r[:, 0])
            kl_sum += float(r[:, 1].sum())
            desirable.append(batch.desirable.cpu())
    engine.train()
    r = torch.cat(ratios) if ratios else torch.zeros(0, dtype=torch.float64)
    d = torch.cat(desirable) if desirable else torch.zeros(0, dtype=torch.bool)
    n = float(all_reduce_sum(torch.tensor(float(len(r)), dtype=torch.float64)))
    z0 = kto_reference_point(all_reduce_sum(torch.tensor(kl_sum, dtype=torch.float64)), n)
    loss, _ = kto_loss(r.float(), torch.zeros_like(r).float(), d, z0, c.beta, c.kto_desirable_weight,
                       c.kto_undesirable_weight, num_examples=1)           # the sum over this rank's examples
    right = torch.where(d, r > z0, r < z0).sum()
    rewards = c.beta * r
    t = all_reduce_sum(torch.tensor([float(loss), float(right), float(rewards[d].sum()), float(d.sum()),
                                     float(rewards[~d].sum()), float((~d).sum())], dtype=torch.float64)).tolist()
    n = max(n, 1.0)
    return {"eval_loss": t[0] / n, "eval_accuracy": t[1] / n, "eval_kl": float(z0),
            "eval_rewards_desirable": t[2] / max(t[3], 1.0), "eval_rewards_undesirable": t[4] / max(t[5], 1.0),
            "eval_examples": int(n)}


def train_kto(ctx: RunContext, sft_path: str, data_path: str, out_dir: Optional[str] = None,
              eval_prompt_path: Optional[str] = None) -> Dict[str, float]:
    return run_stage(ctx, "dpo", out_dir or ctx.path("dpo"),
                     lambda: kto_stage(ctx, sft_path, data_path, eval_prompt_path))
