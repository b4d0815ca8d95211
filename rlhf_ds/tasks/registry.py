"""The embedded tasks, by the name the config's `task` key gives (used when no model is given):
what each builds on disk, the config values that suit it, and what the RL stage measures on it.

    describe     "describe the topic": a reward model trained on noisy preferences, a gold reward that
                 plays the human (tasks/demo.py); its preset is config_schema.DEMO_PRESET
    arithmetic   small sums checked exactly by rule rewards from code; pass@1 and pass@n on held-out
                 questions (tasks/arithmetic/)

Only the standard library is imported here; the builders load `transformers` when called.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

# completions[q][s] (sample s of held-out question q) and the questions' record columns -> figures that
# are each a mean over the questions, every question weighing the same (so ranks can add them up).
SampleScorer = Callable[[Sequence[Sequence[str]], Dict[str, List[Any]]], Dict[str, float]]


@dataclass(frozen=True)
class SampleEvaluation:
    """How the RL stage evaluates the task on held-out prompts: `samples` completions per prompt,
    scored together by `score`, which returns the `figures`; each is logged as eval_<name> and drawn
    in plots/<stage>_eval.png, and those of `summary` go into the summary as <name>_sft and
    <name>_final."""
    samples: int
    score: SampleScorer
    figures: Sequence[str]
    summary: Sequence[str] = ()


@dataclass(frozen=True)
class EmbeddedTask:
    name: str
    prepare: Callable[[str, Any], Dict[str, str]]   # (out_dir, RLHFConfig) -> {"data_sft", ..., "base_model"}
    preset: Dict[str, Any] = field(default_factory=dict)      # config layer over DEMO_PRESET (top level too)
    rl_presets: Dict[str, Dict[str, Any]] = field(default_factory=dict)   # RL recipe -> `ppo` values
    gold_reward: Optional[Callable[[List[str], List[str]], List[float]]] = None
    gold_max: Optional[float] = None
    evaluation: Optional[SampleEvaluation] = None

    def layer(self, recipe: str) -> Dict[str, Any]:
        """The task's config layer for RL recipe `recipe`: its preset, with its RL values (the `*` entry,
        then the recipe's own) in the `ppo` section."""
        ppo = {**self.preset.get("ppo", {}), **self.rl_presets.get("*", {}), **self.rl_presets.get(recipe, {})}
        return {**self.preset, **({"ppo": ppo} if ppo else {})}


def _prepare_describe(out_dir: str, cfg) -> Dict[str, str]:
    from .demo import prepare_demo

    d = cfg.data
    return prepare_demo(out_dir, seed=cfg.seed, arch=cfg.model.arch, ranking_k=d.demo_ranking_k,
                        sft=d.demo_sft_records, preference=d.demo_preference_records, prompts=d.demo_prompt_records,
                        eval_prompts=d.demo_eval_prompts, ranking=max(1, d.demo_ranking_records))


def _prepare_arithmetic(out_dir: str, cfg) -> Dict[str, str]:
    from .arithmetic.prepare import prepare_arithmetic

    d = cfg.data
    return prepare_arithmetic(out_dir, seed=cfg.seed, arch=cfg.model.arch, sft=d.demo_sft_records,
                              prompts=d.demo_prompt_records, eval_prompts=d.demo_eval_prompts)


ARITHMETIC_FIGURES = ("accuracy", "pass_at_n", "format_rate")


def _score_arithmetic(completions: Sequence[Sequence[str]], columns: Dict[str, List[Any]]) -> Dict[str, float]:
    from .arithmetic import score_samples

    figures = score_samples(completions, columns["answer"])
    return {k: figures[k] for k in ARITHMETIC_FIGURES}


def _tasks() -> Dict[str, EmbeddedTask]:
    from . import arithmetic
    from .gold import GOLD_REWARD_MAX, gold_rewards

    return {
        "describe": EmbeddedTask("describe", _prepare_describe, gold_reward=gold_rewards,
                                 gold_max=float(GOLD_REWARD_MAX)),
        "arithmetic": EmbeddedTask("arithmetic", _prepare_arithmetic, preset=arithmetic.PRESET,
                                   rl_presets=arithmetic.RL_PRESETS,
                                   evaluation=SampleEvaluation(arithmetic.EVAL_SAMPLES, _score_arithmetic,
                                                               figures=ARITHMETIC_FIGURES,
                                                               summary=("accuracy", "pass_at_n"))),
    }


def embedded_task(name: str) -> EmbeddedTask:
    tasks = _tasks()
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(tasks)}")
    return tasks[name]


def task_names() -> List[str]:
    return list(_tasks())


def sample_evaluation(cfg) -> Optional[SampleEvaluation]:
    """The held-out evaluation of the run's embedded task, or None (a model of the user's, or a task
    evaluated by one sample per prompt)."""
    return embedded_task(cfg.task).evaluation if cfg.is_demo else None
