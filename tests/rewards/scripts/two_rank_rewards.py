"""Run on 2 ranks by tests/rewards/test_two_ranks.py: a function reward that fails on one rank's
rows only must stop both ranks with the same one-line error (exit 2), as the CLI does; and the
per-source means are taken over both ranks' rows.

    deepspeed --num_gpus 2 two_rank_rewards.py {ok|fail} OUT_DIR
"""
import json
import os
import sys

from rlhf_ds.cli import _user_errors
from rlhf_ds.engine import get_info, init_distributed, shutdown_distributed
from rlhf_ds.rewards import FunctionSource, RewardBatch, combine_on_every_rank, source_metrics


def main(mode: str, out_dir: str) -> None:
    init_distributed("cpu")
    rank = get_info().rank
    # Rank 0 holds answers 1 and None, rank 1 answers 3 and 5 (or "x" when asked to fail).
    answers = [[1, None], [3, 5 if mode == "ok" else "x"]][rank]
    batch = RewardBatch([f"q{rank}a", f"q{rank}b"], ["c", "c"], {"answer": answers})

    def score(prompts, completions, answer):
        return [None if a is None else float(a) for a in answer]     # float("x") raises on rank 1

    def half(prompts, completions, **columns):
        return [0.5] * len(completions)

    try:
        total, parts = combine_on_every_rank([(FunctionSource("acc", score), 1.0),
                                              (FunctionSource("half", half), 2.0)], batch)
    except _user_errors() as e:                 # what rlhf_ds.cli does with a user's error
        print(f"two_rank_rewards.py: {e}", file=sys.stderr)
        shutdown_distributed()                  # the error is raised on every rank, so all of them get here
        raise SystemExit(2)
    metrics = source_metrics(parts)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"total": total.tolist(), "metrics": metrics}, f)
    shutdown_distributed()   # every rank exits cleanly (a gloo peer that leaves first can abort the other)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds it
    main(*args)
