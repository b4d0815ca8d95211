"""`launch/evaluate.py`: compare exported models on held-out prompts.

    deepspeed --num_gpus 2 launch/evaluate.py outputs/demo/sft outputs/demo/ppo
    python launch/evaluate.py run/sft run/ppo --reward_model run/reward_model --prompts held_out.jsonl

What is found in the run folder when not given is described in rlhf_ds/evaluation/plan.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..errors import UserError, exit_on_user_error

PROG = "evaluate.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message):     # one line and status 2, like every other user error
        raise UserError(f"{message} (see --help)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description="Compare exported models on held-out prompts: reward-model score, gold "
                 "reward (demo), win rate against a baseline, KL to the reference, length, distinct-1/2, "
                 "perplexity on held-out SFT data. Writes evaluation.json, evaluation.md, reward_vs_kl.png and "
                 "samples.jsonl.")
    ap.add_argument("models", nargs="+", help="model directories (Hugging Face format, as the stages export them); "
                    "the first is the default baseline, their parent the run folder")
    ap.add_argument("--reward_model", help="default: the run's reward_model/ (or model.reward_model_path)")
    ap.add_argument("--reference", help="KL is measured to this policy; default: the run's sft/ (or "
                    "model.sft_model_path), else the first model")
    ap.add_argument("--baseline", help="the model the others are judged against (name or path); default: the first")
    ap.add_argument("--prompts", help="held-out prompts; default: the run's ppo.eval_prompt_path, the demo's eval "
                    "prompts, or the share of ppo.prompt_path that PPO held out")
    ap.add_argument("--sft_data", help="data for perplexity, used whole; default: the share of the run's SFT data "
                    "that SFT held out")
    ap.add_argument("--num_prompts", type=int, help="use the first N prompts only (default: all)")
    ap.add_argument("--out", help="output folder; default: <run folder>/eval")
    ap.add_argument("--deepspeed", help="DeepSpeed config: a JSON file or a shipped name (zero3, zero2, ...); "
                    "default: the run's")
    ap.add_argument("--batch_size", type=int, help="rows per forward and generate call on one rank (default 16)")
    ap.add_argument("--max_new_tokens", type=int)
    ap.add_argument("--min_new_tokens", type=int)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top_p", type=float)
    ap.add_argument("--top_k", type=int)
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    ap.add_argument("--seed", type=int, help="sampling seed (default: the run's)")
    ap.add_argument("--tie_margin", type=float, help="score differences up to this count as ties (default 0)")
    ap.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)   # set by the launcher
    return ap


def _check(args) -> None:
    for key in ("num_prompts", "batch_size", "max_new_tokens"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise UserError(f"--{key} must be at least 1, got {value}")
    if args.temperature is not None and args.temperature <= 0:
        raise UserError(f"--temperature must be above 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be in (0, 1], got {args.top_p}")


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error(PROG):
        args = parser().parse_args(argv)
        _check(args)
        from .plan import build_plan
        from .run import run_evaluation

        overrides = {k: getattr(args, k) for k in ("num_prompts", "batch_size", "max_new_tokens", "min_new_tokens",
                                                   "temperature", "top_p", "top_k", "seed", "tie_margin", "dtype",
                                                   "device")}
        if args.greedy:
            overrides["do_sample"] = False
        plan = build_plan(args.models, reward_model=args.reward_model, reference=args.reference,
                          baseline=args.baseline, prompts=args.prompts, sft_data=args.sft_data, out_dir=args.out,
                          deepspeed=args.deepspeed, overrides=overrides)
        results = run_evaluation(plan)
        if results is not None:
            from .report import markdown_table
            print(markdown_table(results), end="")
    from ..engine import shutdown_distributed

    shutdown_distributed()
