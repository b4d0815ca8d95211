"""What an evaluation compares, on what, and where it writes: found from the model directories.

    launch/evaluate.py outputs/demo/sft outputs/demo/ppo

A model directory's parent is taken as its run folder (the pipeline's `save_dir`): its
`config.json` gives the reward model (`reward_model/` or model.reward_model_path), the
reference policy (`sft/` or model.sft_model_path), the held-out prompts (ppo.eval_prompt_path,
the demo task's eval prompts, or the share of ppo.prompt_path that PPO held out), the held-out
SFT data (sft.eval_path or the share of sft.data_path that SFT held out), the sampling settings
and lengths. Every one of these can be given by a flag instead; without a run folder the flags
are required where there is nothing to find.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..config import ConfigError, RLHFConfig, load_config
from ..errors import PathNotFoundError, UserError
from ..models.loading import is_model_dir


@dataclass(frozen=True)
class ModelEntry:
    name: str      # how the model is called in the tables: its directory's name
    path: str


@dataclass(frozen=True)
class DataSource:
    """A data file and which part of it is held out: all of it, or the share a stage held out."""
    path: str
    held_out_share: bool = False     # True: the `eval_fraction` split a training stage made of `path`

    def describe(self) -> str:
        return f"{self.path} (the held-out share)" if self.held_out_share else self.path


@dataclass
class EvalPlan:
    models: List[ModelEntry]
    baseline: str                    # name of the model the others are judged against
    reference: str                   # directory of the reference policy (KL is measured to it)
    reward_model: str                # directory of the reward model (scores and win rates)
    prompts: DataSource
    sft_data: Optional[DataSource]   # perplexity data; None: perplexity is not reported
    gold: bool                       # the prompts are the demo task's: report its gold reward
    out_dir: str
    ds_config: str = "zero3"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 42
    num_prompts: int = 0             # 0: every held-out prompt
    batch_size: int = 16             # rows per forward / generate call on one rank
    tie_margin: float = 0.0
    max_prompt_length: int = 256
    max_length: int = 512
    eval_fraction: float = 0.05
    skip_invalid: bool = False
    generation: Dict[str, object] = field(default_factory=dict)   # GenerationSettings fields
    run_dir: Optional[str] = None


def _model_dir(path: str, what: str) -> str:
    if not is_model_dir(path):
        raise PathNotFoundError(f"{what}: {path} is not a model directory (no config.json there)")
    return path


def _names(paths: List[str]) -> List[str]:
    """Directory names, or longer tails of the paths where two would clash (run1/ppo, run2/ppo)."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise UserError(f"the same model directory is given twice: {', '.join(paths)}")


def _run_config(run_dir: str) -> Optional[RLHFConfig]:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        return load_config(path)
    except ConfigError as e:
        # A run written by another version of rlhf_ds: its models can still be compared, with flags.
        print(f"evaluate.py: not using {path} ({e}); give what it would have said by flags", file=sys.stderr)
        return None


def demo_task_paths(run_dir: str) -> Dict[str, str]:
    """The demo task's files under `run_dir/task/` (data_eval_prompts, data_sft, ...), or {}."""
    task_dir = os.path.join(run_dir, "task")
    try:
        with open(os.path.join(task_dir, "task.json"), encoding="utf-8") as f:
            relative = json.load(f).get("paths", {})
    except (OSError, ValueError):
        return {}
    return {k: os.path.join(task_dir, v) for k, v in relative.items()}


def _is_demo_data(path: str, demo: Dict[str, str]) -> bool:
    real = os.path.realpath(path)
    return any(k.startswith("data_") and os.path.realpath(v) == real for k, v in demo.items())


def build_plan(model_dirs: List[str], *, reward_model: Optional[str] = None, reference: Optional[str] = None,
               baseline: Optional[str] = None, prompts: Optional[str] = None, sft_data: Optional[str] = None,
               out_dir: Optional[str] = None, deepspeed: Optional[str] = None, overrides: Optional[Dict] = None
               ) -> EvalPlan:
    """The plan for `model_dirs` (first = default baseline); arguments left None are found in the run
    folder. `overrides` sets EvalPlan fields (seed, num_prompts, ...) and generation keys."""
    if not model_dirs:
        raise UserError("give at least one model directory")
    for p in model_dirs:
        _model_dir(p, "model")
    models = [ModelEntry(n, p) for n, p in zip(_names(model_dirs), model_dirs)]
    run_dir = os.path.dirname(os.path.normpath(os.path.abspath(model_dirs[0])))
    cfg = _run_config(run_dir)
    demo = demo_task_paths(run_dir) if cfg is None or cfg.is_demo else {}

    def run_model(configured: Optional[str], name: str) -> Optional[str]:
        if configured:
            return configured
        return os.path.join(run_dir, name) if is_model_dir(os.path.join(run_dir, name)) else None

    rm = reward_model or run_model(cfg.model.reward_model_path if cfg else None, "reward_model")
    if rm is None:
        raise PathNotFoundError(f"no reward model found beside the models (looked for {run_dir}/reward_model and "
                                f"the run's config.json); give --reward_model DIR")
    ref = reference or run_model(cfg.model.sft_model_path if cfg else None, "sft") or model_dirs[0]

    prompt_source = _prompts(prompts, cfg, demo, run_dir)
    sft_source = _sft_data(sft_data, cfg, demo)
    plan = EvalPlan(models=models, baseline=models[0].name, reference=_model_dir(ref, "reference"),
                    reward_model=_model_dir(rm, "reward model"), prompts=prompt_source, sft_data=sft_source,
                    gold=_is_demo_data(prompt_source.path, demo), out_dir=out_dir or os.path.join(run_dir, "eval"),
                    run_dir=run_dir if cfg is not None else None)
    if cfg is not None:
        plan.ds_config, plan.dtype, plan.device, plan.seed = (cfg.deepspeed.config or "zero3", cfg.model.dtype,
                                                               cfg.model.device, cfg.seed)
        plan.max_prompt_length, plan.max_length = cfg.data.max_prompt_length, cfg.data.max_length
        plan.eval_fraction, plan.skip_invalid = cfg.data.eval_fraction, cfg.data.skip_invalid
        g = cfg.generation
        plan.generation = dict(max_new_tokens=g.max_new_tokens, min_new_tokens=g.min_new_tokens,
                               temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, do_sample=g.do_sample)
    if deepspeed:
        plan.ds_config = deepspeed
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "do_sample"):
            plan.generation[key] = value
        else:
            setattr(plan, key, value)
    if baseline is not None:
        plan.baseline = _baseline_name(baseline, models)
    return plan


def _baseline_name(baseline: str, models: List[ModelEntry]) -> str:
    for m in models:
        if baseline == m.name or os.path.abspath(baseline) == os.path.abspath(m.path):
            return m.name
    raise UserError(f"--baseline {baseline}: not one of the models given ({', '.join(m.name for m in models)})")


def _prompts(given: Optional[str], cfg: Optional[RLHFConfig], demo: Dict[str, str], run_dir: str) -> DataSource:
    if given:
        return DataSource(given)
    if cfg is not None and cfg.ppo.eval_prompt_path:
        return DataSource(cfg.ppo.eval_prompt_path)
    if "data_eval_prompts" in demo:
        return DataSource(demo["data_eval_prompts"])
    if cfg is not None and cfg.ppo.prompt_path:
        return DataSource(cfg.ppo.prompt_path, held_out_share=True)
    raise PathNotFoundError(f"no held-out prompts found for the run in {run_dir} (no config.json with "
                            f"ppo.eval_prompt_path or ppo.prompt_path, no demo task); give --prompts FILE")


def _sft_data(given: Optional[str], cfg: Optional[RLHFConfig], demo: Dict[str, str]) -> Optional[DataSource]:
    if given:
        return DataSource(given)
    if cfg is not None and cfg.sft.eval_path:
        return DataSource(cfg.sft.eval_path)
    if cfg is not None and cfg.sft.data_path:
        return DataSource(cfg.sft.data_path, held_out_share=True)
    if "data_sft" in demo:
        return DataSource(demo["data_sft"], held_out_share=True)
    return None
