"""Command-line entry points behind `launch/*.py`.

    deepspeed launch/train_ppo.py --deepspeed configs/zero3.json [--config FILE] [--save_dir DIR]
                                  [--task describe|arithmetic] [--resume] [--section.key=value ...]

`--deepspeed` is short for `--deepspeed.config`; `--task arithmetic` runs the embedded arithmetic
task (rule rewards from code) instead of the describe demo when no model is given; `--local_rank`,
which the deepspeed launcher adds, is accepted and ignored (the rank comes from the environment).
`--help` lists every key.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Tuple

from .config import ConfigError, describe

USAGE = ("usage: {prog} [--deepspeed DS_JSON] [--config FILE.yaml|json] [--save_dir DIR] [--task TASK] [--resume] "
         "[--section.key=value ...]\n       {prog} --help   (every key, its default and allowed values)")


def split_args(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    """(config file, override list) from raw arguments."""
    config_file, out = None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        takes_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if key in ("--local_rank", "--local-rank"):
            i += 1 if eq or not takes_next else 2
            continue
        if key == "--resume" and not eq and not takes_next:
            out.append("--resume=true")
            i += 1
            continue
        if key in ("--config", "--deepspeed", "--save_dir", "--save-dir"):
            if not eq and not takes_next:
                raise ConfigError(f"command line: {key} needs a value")
            val = value if eq else argv[i + 1]
            if key == "--config":
                config_file = val
            elif key == "--deepspeed":
                out.append(f"--deepspeed.config={val}")
            else:
                out.append(f"--save_dir={val}")
            i += 1 if eq else 2
            continue
        out.append(arg)
        i += 1
    return config_file, out


def _pipeline(argv: List[str], prog: str, recipe: Optional[str] = None):
    from .pipeline import create_rlhf_pipeline

    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(prog=prog))
        print(describe())
        raise SystemExit(0)
    try:
        config_file, overrides = split_args(argv)
        return create_rlhf_pipeline(config_file, overrides, recipe=recipe)
    except _user_errors() as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2)


def _user_errors():
    """Errors that are the user's to fix (config, data, model paths, LoRA targets, memory, a reward function
    or endpoint that fails on real data): printed as one line, exit status 2, no traceback. The list is
    rlhf_ds.errors.user_error_types, shared with launch/evaluate.py and launch/chat.py."""
    from .errors import user_error_types

    return user_error_types()


def _run(prog: str, argv: Optional[List[str]], stages, recipe: Optional[str] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    pipe = _pipeline(argv, prog, recipe)
    try:
        stages(pipe)
    except _user_errors() as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2)
    from .engine import shutdown_distributed

    shutdown_distributed()  # a clean exit on every rank, not a gloo abort on the fastest one


def main_sft(argv: Optional[List[str]] = None) -> None:
    _run("train_sft.py", argv, lambda pipe: (pipe.run_sft(), pipe.finish()))


def main_rm(argv: Optional[List[str]] = None) -> None:
    _run("train_rm.py", argv, lambda pipe: (pipe.run_reward_training(), pipe.finish()))


def main_ppo(argv: Optional[List[str]] = None) -> None:
    """The full recipe: SFT and reward model when missing, then PPO, then the summary."""
    _run("train_ppo.py", argv, lambda pipe: pipe.run_full_pipeline())


def main_dpo(argv: Optional[List[str]] = None) -> None:
    """Offline preference optimisation: the SFT model when missing, then DPO (or a variant, or KTO: the dpo
    section), then the summary."""
    _run("train_dpo.py", argv, lambda pipe: pipe.run_dpo_pipeline())


def main_grpo(argv: Optional[List[str]] = None) -> None:
    """The GRPO recipe (config_schema.RL_RECIPES["grpo"], under any file or command-line value): SFT and
    reward model when missing (no reward model when the rewards come from code, as with --task
    arithmetic), then GRPO, then the summary."""
    _run("train_grpo.py", argv, lambda pipe: pipe.run_full_pipeline(), recipe="grpo")
