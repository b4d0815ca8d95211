"""RLHFConfig -> run_sft -> run_reward_training -> run_rl_training, with outputs as in docs/architecture.md
(Conventions: the outputs of a run).

    pipeline = create_rlhf_pipeline("configs/demo.yaml", ["--ppo.iterations=10"])
    summary = pipeline.run_full_pipeline()
    grpo = create_rlhf_pipeline(None, [], recipe="grpo")      # an RL recipe under the file and overrides

A stage whose exported model already exists (`sft/`, `reward_model/`) is reused, so a
second run goes straight to RL; `--resume` continues an interrupted stage from its last
checkpoint. The RL stage is PPO or one of the critic-free algorithms (the `ppo` section; see
trainers/rl_loop.py); no reward model is trained or loaded when no reward source uses one.
With no model given, the embedded demo task supplies data, tokenizer and a
tiny base model, built on rank 0 under `save_dir/task/`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from .config import ConfigError, RLHFConfig, build_config, load_config, parse_overrides
from .config_schema import recipe_layer
from .engine import (all_reduce_max, barrier, init_distributed, load_ds_config, read_metadata, resolve_precision,
                     seed_everything, zero_stage)
from .errors import UserError
from .files import write_text_atomic
from .logging import MetricsLogger, get_logger, write_plots
from .lora_settings import LoRAConfigError, LoRASettings, check_lora_config
from .models.loading import is_model_dir, load_tokenizer, quiet_transformers
from .peak_memory import GiB, peak_memory_bytes
from .trainers.common import RunContext

PLOTS = {
    "sft": ["loss", "eval_loss", "lr"],
    "reward": ["loss", "accuracy", "eval_accuracy", "eval_margin"],
    "dpo": ["loss", "reward_accuracy", "reward_margin", "eval_loss", "eval_accuracy", "eval_margin", "rewards_desirable",
            "rewards_undesirable", "kl"],
}
# The RL stage's curves, whichever algorithm (the stage is named after it: ppo, grpo, ...).
RL_PLOTS = ["reward_mean", "gold_reward", "eval_gold_reward", "kl", "kl_loss", "clip_fraction_low",
            "clip_fraction_high", "entropy", "value_loss", "response_length", "truncation_rate", "zero_spread_share",
            "dropped_groups"]


class RLHFPipeline:
    def __init__(self, cfg: RLHFConfig):
        self.cfg = cfg
        self.dist = init_distributed(cfg.model.device)
        self.log = get_logger(cfg.logging.log_level, self.dist.rank)
        quiet_transformers()
        seed_everything(cfg.seed)   # the same on every rank: models are built identically
        self.t0 = time.time()
        self.summary: Dict[str, Any] = {}
        os.makedirs(cfg.save_dir, exist_ok=True)
        self.ds_config = load_ds_config(cfg.deepspeed.config)
        self.precision = resolve_precision(cfg.model.dtype, self.dist.device)
        if self.dist.is_main:
            cfg.save(os.path.join(cfg.save_dir, "config.json"))
        self.task_paths: Dict[str, str] = {}
        self.gold_fn, self.gold_max = None, None
        if cfg.is_demo:
            self._prepare_demo()
        tok_path = cfg.model.tokenizer_path or cfg.model.sft_model_path or cfg.model.name_or_path or \
            self.task_paths["tokenizer"]
        self.tokenizer = load_tokenizer(tok_path, cfg.model.trust_remote_code)
        self.metrics = MetricsLogger(os.path.join(cfg.save_dir, "logs"), enabled=self.dist.is_main,
                                     tensorboard=cfg.logging.tensorboard)
        self.log.info(f"rlhf_ds: {self.dist.world_size} rank(s), {self.dist.backend} on {self.dist.device.type}, "
                      f"{self.precision}, DeepSpeed config {cfg.deepspeed.config} "
                      f"(ZeRO-{self.ds_config.get('zero_optimization', {}).get('stage', 0)}), "
                      f"output in {cfg.save_dir}" + (" [demo task]" if cfg.is_demo else ""))

    # ------------------------------------------------------------------ setup
    def _prepare_demo(self) -> None:
        """The embedded task's files (`task`: describe, arithmetic), built on rank 0 under save_dir/task/
        (reused when built with the same arguments), then read by every rank."""
        from .tasks.registry import embedded_task

        task = embedded_task(self.cfg.task)
        task_dir = os.path.join(self.cfg.save_dir, "task")
        if self.dist.is_main:
            task.prepare(task_dir, self.cfg)
        barrier()
        self.task_paths = task.prepare(task_dir, self.cfg)
        self.gold_fn, self.gold_max = task.gold_reward, task.gold_max

    def _context(self) -> RunContext:
        return RunContext(cfg=self.cfg, dist=self.dist, ds_config=self.ds_config, precision=self.precision,
                          log=self.log, metrics=self.metrics, tokenizer=self.tokenizer,
                          gold_reward_fn=self.gold_fn)

    def _data(self, configured: Optional[str], demo_name: str, what: str) -> str:
        if configured:
            return configured
        if self.cfg.is_demo:
            return self.task_paths[f"data_{demo_name}"]
        raise UserError(f"{what}: no data given (set it in the config or on the command line)")

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.save_dir, name)

    # ------------------------------------------------------------------ stages
    def sft_model(self) -> str:
        return self.cfg.model.sft_model_path or self.path("sft")

    def reward_model(self) -> str:
        return self.cfg.model.reward_model_path or self.path("reward_model")

    def _preflight(self, *stages: str) -> None:
        """Before any engine of `stages` is built: refuse LoRA/QLoRA combinations that cannot work, log the
        memory estimate, and on a GPU refuse a run whose estimate exceeds the device (rlhf_ds/memory.py)."""
        from .memory import check_before_run

        done = self.__dict__.setdefault("_preflight_done", set())
        todo = [s for s in stages if s not in done]
        if not todo:
            return
        try:
            check_lora_config(LoRASettings.from_config(self.cfg.lora), zero_stage(self.ds_config),
                              self.cfg.model.critic_init)
        except LoRAConfigError as e:
            raise ConfigError(str(e)) from None
        check_before_run(self.cfg, self.ds_config, self.dist, self.log, todo,
                         model_dir=self.task_paths.get("base_model"), precision=self.precision)
        done.update(todo)

    def run_sft(self) -> Dict[str, Any]:
        from .trainers.sft import train_sft

        self._preflight("sft")
        init = self.cfg.model.name_or_path or self.task_paths["base_model"]
        data = self._data(self.cfg.sft.data_path, "sft", "sft.data_path")
        out = train_sft(self._context(), init, data, self.path("sft"))
        self.summary.update(out)
        return out

    def run_reward_training(self) -> Dict[str, Any]:
        from .trainers.reward import train_reward

        self._preflight("reward")
        cfg = self.cfg
        data = self._data(cfg.reward.data_path, "preference", "reward.data_path")
        if cfg.is_demo and cfg.reward.data_path is None and cfg.reward.eval_path is None:
            # The demo's held-out pairs come from held-out prompts: a fairer test than a random split.
            cfg.reward.eval_path = self.task_paths["data_preference_eval"]
        out = train_reward(self._context(), self._require(self.sft_model(), "an SFT model"), data, self.path("reward_model"))
        self.summary.update(out)
        return out

    def needs_reward_model(self) -> bool:
        """The RL stage reads a reward model: a reward source is one, or PPO's critic starts from one."""
        from .rl import advantage_estimator
        from .trainers.rl_rewards import uses_reward_model

        critic = advantage_estimator(self.cfg.ppo.advantage_estimator).needs_critic
        return uses_reward_model(self.cfg) or (critic and self.cfg.model.critic_init == "reward")

    def run_rl_training(self) -> Dict[str, Any]:
        """The RL stage: PPO or a critic-free algorithm, as the `ppo` section says."""
        from .trainers.rl_loop import train_rl

        self._preflight("ppo")
        cfg = self.cfg
        prompts = self._data(cfg.ppo.prompt_path, "prompts", "ppo.prompt_path")
        eval_prompts = cfg.ppo.eval_prompt_path or (self.task_paths["data_eval_prompts"] if cfg.is_demo else None)
        ptx = cfg.ppo.ptx_data_path or (self._data(cfg.sft.data_path, "sft", "ppo.ptx_data_path")
                                        if cfg.ppo.ptx_coef > 0 else None)
        reward = self._require(self.reward_model(), "a reward model") if self.needs_reward_model() else None
        out = train_rl(self._context(), self._require(self.sft_model(), "an SFT model"), reward, prompts,
                       eval_prompts, ptx)
        self.summary.update(out)
        return out

    run_ppo_training = run_rl_training    # the name it had when PPO was the only RL algorithm

    def _task_figures(self) -> List[str]:
        """eval_<name> of the embedded task's sampled evaluation (none for a model of the user's)."""
        from .tasks.registry import sample_evaluation

        task_eval = sample_evaluation(self.cfg)
        return [] if task_eval is None else [f"eval_{k}" for k in task_eval.figures]

    def _rl_plots(self) -> List[str]:
        """The RL stage's curves: RL_PLOTS, and each reward source's own mean when there are several."""
        labels = [src.label() for src in self.cfg.rewards.sources]
        return RL_PLOTS + ([f"reward/{name}" for name in labels] if len(labels) > 1 else [])

    def _require(self, path: str, what: str) -> str:
        """`path` must be a model directory, or a hub id (`org/name`, not an existing local path)."""
        looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~")) and not os.path.exists(path)
        if not is_model_dir(path) and not looks_like_hub_id:
            raise FileNotFoundError(f"this stage needs {what} at {path}, and there is none; train it first "
                                    f"(run_sft / run_reward_training) or set model.sft_model_path / "
                                    f"model.reward_model_path")
        return path

    def _stage_done(self, path: str) -> bool:
        return is_model_dir(path) and read_metadata(path) is not None

    def run_dpo(self) -> Dict[str, Any]:
        """Offline preference optimisation from the SFT model (the dpo section: DPO and its variants on
        pairs, KTO on unpaired data); outputs in save_dir/dpo/."""
        from .trainers.dpo import train_dpo
        from .trainers.kto import train_kto

        try:
            check_lora_config(LoRASettings.from_config(self.cfg.lora), zero_stage(self.ds_config))
        except LoRAConfigError as e:
            raise ConfigError(str(e)) from None
        cfg = self.cfg
        data = self._data(cfg.dpo.data_path, "preference", "dpo.data_path")
        if cfg.is_demo and cfg.dpo.data_path is None and cfg.dpo.eval_path is None:
            # The demo's held-out pairs come from held-out prompts, as for the reward stage.
            cfg.dpo.eval_path = self.task_paths["data_preference_eval"]
        eval_prompts = cfg.dpo.eval_prompt_path or (self.task_paths["data_eval_prompts"] if cfg.is_demo else None)
        train = train_kto if cfg.dpo.loss_type == "kto" else train_dpo
        out = train(self._context(), self._require(self.sft_model(), "an SFT model"), data, self.path("dpo"),
                    eval_prompt_path=eval_prompts)
        self.summary.update(out)
        return out

    def run_dpo_pipeline(self) -> Dict[str, Any]:
        """The SFT model when missing (reused when present), then DPO (or KTO); writes the summary."""
        if self.cfg.model.sft_model_path is None and self._stage_done(self.path("sft")):
            self.log.info(f"sft: reusing {self.path('sft')}")
        elif self.cfg.model.sft_model_path is None:
            self.run_sft()
        self.run_dpo()
        return self.finish()

    def run_full_pipeline(self) -> Dict[str, Any]:
        """SFT and reward model when missing (reused when present; no reward model when the RL stage reads
        none), then the RL stage; writes the summary."""
        needs_rm = self.needs_reward_model()
        self._preflight("sft", *(("reward",) if needs_rm else ()), "ppo")
        if self.cfg.model.sft_model_path is None and self._stage_done(self.path("sft")):
            self.log.info(f"sft: reusing {self.path('sft')}")
        elif self.cfg.model.sft_model_path is None:
            self.run_sft()
        if not needs_rm:
            self.log.info("reward: no reward source is the reward model; none is trained")
        elif self.cfg.model.reward_model_path is None and self._stage_done(self.path("reward_model")):
            meta = read_metadata(self.path("reward_model")) or {}
            self.summary["rm_eval_accuracy"] = meta.get("eval_accuracy")
            self.log.info(f"reward: reusing {self.path('reward_model')} (eval accuracy {meta.get('eval_accuracy')})")
        elif self.cfg.model.reward_model_path is None:
            self.run_reward_training()
        self.run_rl_training()
        return self.finish()

    def finish(self) -> Dict[str, Any]:
        s = self.summary
        s["gold_reward_max"] = self.gold_max
        s["wall_time_s"] = time.time() - self.t0
        s["world_size"] = self.dist.world_size
        # Every rank takes part (a collective): the largest peak is what each rank must be able to hold.
        s["peak_memory_gib"] = float(all_reduce_max(float(peak_memory_bytes(self.dist.device)))) / GiB
        sft, final, top = s.get("gold_reward_sft"), s.get("gold_reward_final"), self.gold_max
        if None not in (sft, final, top) and top > sft:
            s["gold_gap_closed"] = (final - sft) / (top - sft)
        # With several samples per question: the share of the gap between the SFT policy's pass@1 and its
        # pass@n (what picking the right one of n samples reaches) that RL closed.
        acc_sft, acc_final, reach = s.get("accuracy_sft"), s.get("accuracy_final"), s.get("pass_at_n_sft")
        if None not in (acc_sft, acc_final, reach) and reach > acc_sft:
            s["accuracy_gap_closed"] = (acc_final - acc_sft) / (reach - acc_sft)
        if self.dist.is_main:
            path = os.path.join(self.cfg.save_dir, "logs", "summary.json")
            write_text_atomic(path, json.dumps(s, indent=2))
            if self.cfg.logging.plots:
                rl = {} if "dpo_steps" in s else {s.get("algorithm", "ppo"): self._rl_plots()}   # offline: as dpo
                write_plots(self.metrics.path, self.path("plots"), {**PLOTS, **rl})
                if "dpo_steps" not in s and self._task_figures():
                    write_eval_curves(self.metrics.path, self.path("plots"), s.get("algorithm", "ppo"),
                                      self._task_figures())
            self.log.info("summary: " + ", ".join(f"{k}={_fmt(v)}" for k, v in s.items()
                                                  if k not in ("tokens_total", "work_s")))
        self.metrics.close()
        barrier()
        return s


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_eval_curves(metrics_path: str, out_dir: str, stage: str, keys: List[str]) -> Optional[str]:
    """plots/<stage>_eval.png: each held-out figure of `keys` from before training (step 0) through the
    periodic evaluations to the final one (logged as final_<key>), so the curve ends where the run did."""
    if not os.path.exists(metrics_path):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path, encoding="utf-8") as f:
        rows = [r for r in (json.loads(line) for line in f if line.strip()) if r.get("stage") == stage]
    curves = {k: sorted((r["step"], r.get(k, r.get(f"final_{k}"))) for r in rows
                        if isinstance(r.get(k, r.get(f"final_{k}")), (int, float))) for k in keys}
    curves = {k: pts for k, pts in curves.items() if pts}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
    ax.set_xlabel("iteration")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{stage}: held-out evaluation")
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stage}_eval.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def create_rlhf_pipeline(source: Any = None, overrides: Optional[List[str]] = None,
                         recipe: Optional[str] = None) -> RLHFPipeline:
    """A pipeline from a config (RLHFConfig, dict, JSON/YAML path, or None for the demo) plus
    `--section.key=value` overrides. `recipe` names an RL recipe (config_schema.RL_RECIPES, with its
    demo values when no model is given) applied under the file and the overrides."""
    return RLHFPipeline(pipeline_config(source, overrides, recipe))


def pipeline_config(source: Any = None, overrides: Optional[List[str]] = None,
                    recipe: Optional[str] = None) -> RLHFConfig:
    """The configuration `create_rlhf_pipeline` runs with. Layers, later ones winning: defaults, the
    demo preset (no model given), the embedded task's preset and RL values (`task`, e.g. arithmetic),
    the recipe's keys, then the file (or dict) and the command line."""
    if isinstance(source, RLHFConfig):
        if recipe is not None:
            raise ConfigError("an RL recipe goes with a config file path or the demo, not a config object")
        cfg = load_config(source, overrides)
        embedded_task_of(cfg.task, cfg.model.name_or_path)      # a whole config: every value is already stated
        return cfg
    task_name, model = _stated(source, overrides)
    task = embedded_task_of(task_name, model)
    if recipe is None and task is None:
        return load_config(source, overrides)
    base = recipe_layer(recipe, model is None and task is None) if recipe is not None else {}
    if task is not None:
        # The task's preset and RL values win over the recipe's keys (its describe-tuned demo values are
        # left out); the user's file and command line win over both.
        layer = task.layer(recipe or "ppo")
        base = {**layer, "ppo": {**base.get("ppo", {}), **layer.get("ppo", {})}}
    parsed = parse_overrides(overrides or [])
    if isinstance(source, dict):
        return build_config(base=_merge_layers(base, source), overrides=parsed)
    return build_config(file=str(source) if source is not None else None, overrides=parsed, base=base)


def _stated(source: Any, overrides: Optional[List[str]]):
    """(task, model.name_or_path) as the file or dict and the command line state them, before any preset
    is chosen (a full build here would check values against the wrong preset). Read through the config's
    own layer merging, so flat keys and errors are the same as in build_config."""
    from .config import _load_file, _merge_layer

    merged: Dict[str, Any] = {}
    if isinstance(source, dict):
        _merge_layer(merged, source, "config")
    elif source is not None:
        data, lines = _load_file(str(source))
        _merge_layer(merged, data, str(source), lines)
    _merge_layer(merged, parse_overrides(overrides or []), "command line")
    task = merged.get("task", ("describe", ""))[0]
    model = merged.get("model", {}).get("name_or_path", (None, ""))[0]
    if model is not None and str(model).strip().lower() in ("none", "null", ""):
        model = None
    return task, model


def embedded_task_of(task: str, model: Optional[str]):
    """The embedded task whose preset applies (config `task`; the describe demo's preset is DEMO_PRESET,
    applied by the config itself), or None. A task brings the demo's data and tiny model: with a model
    of the user's it is an error, not a silently unused key. An unknown name is left to the config's
    own check (one line naming the allowed values)."""
    from .tasks.registry import embedded_task, task_names

    if task == "describe" or task not in task_names():
        return None
    if model is not None:
        raise ConfigError(f"task: {task} is an embedded task (its own data and tiny model); it runs without "
                          f"model.name_or_path, which is {model!r}")
    return embedded_task(task)


def _merge_layers(low: Dict[str, Any], high: Dict[str, Any]) -> Dict[str, Any]:
    """`high` over `low`, section by section."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in low.items()}
    for k, v in high.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
