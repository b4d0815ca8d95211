"""The loop that the supervised-style stages share: SFT, the reward model, DPO and KTO.

    return run_stage(ctx, "sft", out_dir, lambda: Stage(...))

1. resume preflight: with `--resume`, a stage that had finished returns the result it recorded and
   leaves its outputs as they are (checked before any data is read or engine is built)
2. the stage: its data, model, loss, evaluation and report (`Stage`, built by the caller's function)
3. batch plan and a sharded, resumable sampler over the training records
4. the engine, from the stage's model and the shared schedule keys (config_schema.StageSchedule)
5. resume from the latest checkpoint (engine, sampler, RNG, best so far, the stage's own state)
6. per global batch: the stage's `prepare` (global counts over all ranks), then for each micro-batch
   its loss (this rank's share of the step's global mean), backward, step
7. evaluate every `eval_interval` steps and at the last; a better model by the stage's metric is
   exported to `<out>.best`
8. export: the best model becomes `<out>` (the last one when there is no eval data), the last one
   `<out>/last` when the stage keeps it; the stage's `finish`, then the stage is recorded as finished

Nothing here knows what a loss computes: a stage supplies it, its evaluation and what it exports.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..engine import CheckpointManager, Engine, barrier, build_train_engine, export_pretrained
from ..logging import progress
from .common import (RunContext, ShardedSampler, mark_finished, plan_batches, publish_best, reduce_sums,
                     resume_preflight, resume_state)
from .lora_setup import lora_settings

# (engine, micro-batch, what `prepare` returned) -> (this rank's share of the step's global mean loss,
# figures to report, each a sum over the micro-batch's records: the loop sums them over micro-batches and
# ranks and divides by the batch size)
LossFn = Callable[[Engine, Any, Dict[str, Any]], Tuple[torch.Tensor, Dict[str, float]]]


def _no_preparation(engine: Engine, batch) -> Dict[str, Any]:
    return {}


@dataclass
class Stage:
    """What one supervised-style stage supplies to `run_stage`."""
    schedule: Any                                   # its config section (a StageSchedule: epochs, batch_size, ...)
    train_data: Any                                 # a dataset: len, [i], collate(list) -> batch with .split, .to
    eval_data: Any                                  # the same, held out (may be empty: no evaluation)
    model: Callable[[], torch.nn.Module]            # builds the trained model (sharded under ZeRO-3)
    loss: LossFn
    evaluate: Callable[[Engine, int], Dict[str, float]]   # (engine, micro-batch size) -> eval_* figures
    metric: str                                     # the evaluation figure that picks the best model
    higher_is_better: bool
    # (steps, the exported model's evaluation figures: {} without eval data) -> the stage's result
    result: Callable[[int, Dict[str, float]], Dict[str, Any]]
    prepare: Callable[[Engine, Any], Dict[str, Any]] = _no_preparation   # per global batch, all ranks
    rate: Optional[str] = None                      # a count in `prepare`'s dict, logged as <rate>_per_s
    figures: Optional[Callable[[Dict[str, float]], Dict[str, float]]] = None   # per-record means -> logged
    export_head: str = "lm"                         # export_pretrained's head: "lm" or "model" (scalar)
    keep_last: bool = False                         # also export the last model as <out>/last
    describe: str = ""                              # appended to the line that starts the stage
    start: Optional[Callable[[Engine], None]] = None    # on a fresh start, before the first step
    finish: Optional[Callable[[Engine, int], Dict[str, Any]]] = None   # (engine, steps) after the export: more
                                                                        # result entries
    # The stage's own figures that must survive a resume (for example an evaluation before training):
    # saved in every checkpoint and restored from it.
    state: Dict[str, Any] = field(default_factory=dict)


def _better(value: float, best: Dict[str, float], metric: str, higher: bool) -> bool:
    return not best or (value > best[metric] if higher else value < best[metric])


def run_stage(ctx: RunContext, name: str, out_dir: str, build: Callable[[], Stage]) -> Dict[str, Any]:
    """Train the stage that `build` returns (see the module docstring); `name` is its config section, its
    checkpoints (checkpoints/<name>/), its metrics and its engine. Returns the stage's result."""
    cfg, dist, log = ctx.cfg, ctx.dist, ctx.log
    ckpt = CheckpointManager(os.path.join(cfg.save_dir, "checkpoints", name))
    # 1. a finished stage is not run again
    done = resume_preflight(ctx, ckpt, name, [out_dir])
    if done is not None:
        return done
    # 2. the stage
    stage = build()
    c = stage.schedule
    has_eval = len(stage.eval_data) > 0
    if not has_eval:
        # The best of nothing would be the first model evaluated, its figures means over no records.
        log.warning(f"{name}: no eval data (data.eval_fraction={cfg.data.eval_fraction}, {name}.eval_path="
                    f"{getattr(c, 'eval_path', None)}): no evaluation, and the last model is exported as {out_dir}")
    # 3. batch plan and sampler
    plan = plan_batches(c.batch_size, c.micro_batch_size, dist.world_size, name)
    sampler = ShardedSampler(len(stage.train_data), c.batch_size, dist.rank, dist.world_size, cfg.seed)
    total = c.max_steps or max(1, int(c.epochs * sampler.batches_per_epoch))
    eval_every = c.eval_interval or sampler.batches_per_epoch
    # 4. engine
    engine = build_train_engine(
        name, stage.model, ctx.ds_config, micro_batch_size=plan.micro, grad_accum=plan.grad_accum,
        precision=ctx.precision, gradient_clipping=cfg.deepspeed.gradient_clipping, lr=c.learning_rate,
        weight_decay=c.weight_decay, total_steps=total, warmup_steps=int(c.warmup_ratio * total),
        schedule=c.lr_scheduler, source=str(cfg.deepspeed.config), seed=cfg.seed,
        lr_overrides=lora_settings(cfg).lr_overrides())
    log.info(f"{name}: {len(stage.train_data)} train / {len(stage.eval_data)} eval records, {total} steps of "
             f"{c.batch_size} ({plan.world} ranks x {plan.grad_accum} x {plan.micro})" + stage.describe)
    # 5. resume
    state = resume_state(ctx, ckpt, {name: engine}, name, sampler)
    step, best = 0, {}          # best: the evaluation figures of the model exported as the best so far
    if state is not None:
        step, best = state["step"], state.get("best_eval", {})
        stage.state.update(state.get("stage", {}))
    else:
        if dist.is_main:
            shutil.rmtree(out_dir + ".best", ignore_errors=True)   # left by an earlier run that did not finish
        if stage.start is not None:
            stage.start(engine)
    # 6. train
    bar = progress(total=total, desc=name, enabled=ctx.progress_enabled, initial=step)
    t0, cpu0, seen, last_eval = time.time(), time.process_time(), 0.0, {}
    while step < total:
        rows = sampler.next_indices()
        batch = stage.train_data.collate([stage.train_data[i] for i in rows]).to(engine.device)
        prepared = stage.prepare(engine, batch)
        sums: Dict[str, float] = {"loss": 0.0}
        for part in batch.split(plan.micro):
            loss, figures = stage.loss(engine, part, prepared)
            engine.backward(loss)
            engine.step()
            sums["loss"] += float(loss.detach())
            for k, v in figures.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        step += 1
        bar.update(1)
        totals = reduce_sums(sums)
        # The loss shares of one step add up to its global mean; the other figures are per record.
        means = {k: v / c.batch_size for k, v in totals.items() if k != "loss"}
        metrics = {"loss": totals["loss"], **(stage.figures(means) if stage.figures is not None else means),
                   "lr": engine.lr, "epoch": sampler.epoch + sampler.batch / sampler.batches_per_epoch}
        if stage.rate is not None:
            seen += float(prepared[stage.rate])
            metrics[f"{stage.rate}_per_s"] = seen / max(1e-9, time.time() - t0)
            # The same per CPU second of this process (all its threads): steadier than the wall clock when
            # other jobs share the machine.
            metrics[f"cpu_{stage.rate}_per_s"] = seen / max(1e-9, time.process_time() - cpu0)
        if engine.global_grad_norm is not None:
            metrics["grad_norm"] = engine.global_grad_norm
        # 7. evaluate, keep the best
        evaluated = has_eval and (step % eval_every == 0 or step == total)
        if evaluated:
            last_eval = stage.evaluate(engine, plan.micro)
            metrics.update(last_eval)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", eval=f"{last_eval[stage.metric]:.3f}")
            if _better(last_eval[stage.metric], best, stage.metric, stage.higher_is_better):
                best = dict(last_eval)
                export_pretrained(engine, stage.export_head, out_dir + ".best", ctx.tokenizer,
                                  {"stage": name, "step": step, **last_eval})
        if dist.is_main and (step % cfg.logging.log_interval == 0 or step == total or evaluated):
            ctx.metrics.log(name, step, metrics)
        if cfg.save_interval and step % cfg.save_interval == 0 and step < total:
            ckpt.save(f"step{step}", {name: engine}, {"step": step, "best_eval": best, "sampler": sampler.state_dict(),
                                                      "stage": stage.state})
    bar.close()
    # 8. export: the best model becomes <out> (the last one without eval data), the last one <out>/last
    meta = {"stage": name, "step": step, **last_eval}
    if not has_eval:
        export_pretrained(engine, stage.export_head, out_dir + ".best", ctx.tokenizer,
                          {**meta, "selected": "last, no eval data"})
    elif stage.keep_last:
        export_pretrained(engine, stage.export_head, out_dir + ".last", ctx.tokenizer, meta)
    if dist.is_main:
        if stage.keep_last and not has_eval:
            shutil.rmtree(out_dir + ".last", ignore_errors=True)
            shutil.copytree(out_dir + ".best", out_dir + ".last")
        publish_best(out_dir, resumed=state is not None, last=out_dir + ".last" if stage.keep_last else None)
    barrier()
    extra = stage.finish(engine, step) if stage.finish is not None else {}
    engine.destroy()
    result = {**stage.result(step, best if has_eval else {}), **extra}
    if has_eval:
        log.info(f"{name}: done in {time.time() - t0:.0f}s, best {stage.metric} {best[stage.metric]:.4g}")
    else:
        log.info(f"{name}: done in {time.time() - t0:.0f}s, no evaluation: the last model (step {step}) is {out_dir}")
    mark_finished(ctx, ckpt, name, step, result)
    return result
