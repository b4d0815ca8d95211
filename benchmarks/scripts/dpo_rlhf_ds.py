"""rlhf_ds's DPO on one process, as a user runs it (the deepspeed launcher and launch/train_dpo.py):
the rlhf_ds side of benchmarks/test_dpo_throughput.py.

    python dpo_rlhf_ds.py MODEL_DIR PAIRS.jsonl EVAL_PAIRS.jsonl OUT.json --deepspeed CONFIG --work DIR

Writes {"pairs", "pairs_per_s", "pairs_per_cpu_s", "final_loss", "steps"}: pairs_per_s is what the stage
logs at its last step (pairs trained / seconds since the first step began: the training loop, without
tokenisation, model loading or the final evaluation), pairs_per_cpu_s the same per CPU second of the
process; final_loss the mean training loss over the steps (TRL's
train_loss is the same mean).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("pairs")
    p.add_argument("eval_pairs")
    p.add_argument("out")
    p.add_argument("--deepspeed", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--batch", type=int, default=32)
    a, extra = p.parse_known_args()
    with open(a.pairs) as f:
        n = sum(1 for line in f if line.strip())
    shutil.rmtree(a.work, ignore_errors=True)
    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", "1", "--master_port", str(_free_port()), os.path.join(REPO, "launch", "train_dpo.py"),
           "--deepspeed", a.deepspeed, f"--model.name_or_path={a.model}", f"--model.sft_model_path={a.model}",
           f"--dpo.data_path={a.pairs}", f"--dpo.eval_path={a.eval_pairs}", "--data.max_length=64",
           "--data.max_prompt_length=32", "--dpo.beta=0.1", "--dpo.learning_rate=5e-4", "--dpo.lr_scheduler=cosine",
           f"--dpo.batch_size={a.batch}", f"--dpo.max_steps={n // a.batch}", "--logging.log_interval=1",
           "--logging.progress=false", f"--save_dir={a.work}", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-5000:]}")
    with open(os.path.join(a.work, "logs", "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if r.get("stage") == "dpo" and "pairs_per_s" in r]
    result = {"pairs": steps[-1]["step"] * a.batch, "pairs_per_s": steps[-1]["pairs_per_s"], "steps": steps[-1]["step"],
              "pairs_per_cpu_s": steps[-1]["cpu_pairs_per_s"],
              "final_loss": sum(r["loss"] for r in steps) / len(steps), "config": os.path.basename(a.deepspeed)}
    with open(a.out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
