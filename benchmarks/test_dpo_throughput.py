"""DPO training throughput: rlhf_ds against TRL's DPOTrainer, one process each, same run.

Both start from the same model (the demo's tiny LLaMA, as `prepare_demo` builds it) on the same first
N demo preference pairs, with the settings of issue #17: beta 0.1, learning rate 5e-4 (cosine), batch
32, max length 64, a frozen copy of the model as the reference, fp32 on CPU. TRL gets the pairs in chat
form and tokenises them itself; rlhf_ds reads the same records from a JSONL file. The figure is training
pairs per second: TRL's `trainer.train()` wall time, rlhf_ds's `pairs_per_s` at its last step (the training
loop: both exclude tokenisation, model loading and the final evaluation), and the same per CPU second
of the process (steadier when other jobs share the machine). The two tools alternate, `REPEATS` times
each; medians are compared.

    pip install -e ".[bench]"          # TRL 1.12
    pytest benchmarks/test_dpo_throughput.py -s

Environment: RLHF_DS_DPO_BENCH_PAIRS (default 1280: 40 steps), RLHF_DS_DPO_BENCH_REPEATS (2),
RLHF_DS_DPO_BENCH_CONFIGS (zero3,zero2: rlhf_ds's DeepSpeed configs measured). The target (rlhf_ds >= 1.5x
TRL with configs/zero3.json) is printed as PASS or BELOW, never asserted: timings on a shared machine are
not a test. Asserted: both tools train every pair and report a finite loss that fell below log 2.
Results: benchmarks/results/dpo_throughput.json.
"""
import json
import math
import os
import statistics
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from launching import deepspeed_cmd

pytest.importorskip("trl", reason="TRL is not installed: pip install -e '.[bench]' (TRL 1.12) to compare with it")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "dpo_throughput.json")
TRL_SCRIPT = os.path.join(HERE, "scripts", "dpo_trl.py")
DPO = os.path.join(REPO, "launch", "train_dpo.py")
TARGET = 1.5
PAIRS = int(os.environ.get("RLHF_DS_DPO_BENCH_PAIRS", "1280"))
REPEATS = int(os.environ.get("RLHF_DS_DPO_BENCH_REPEATS", "2"))
CONFIGS = [c for c in os.environ.get("RLHF_DS_DPO_BENCH_CONFIGS", "zero3,zero2").split(",") if c]


def _run(cmd, timeout=1800):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-5000:]}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from rlhf_ds.tasks.demo import prepare_demo

    root = tmp_path_factory.mktemp("dpo_bench")
    paths = prepare_demo(str(root / "demo"))
    with open(paths["data_preference"]) as f:
        rows = [line for line in f if line.strip()][:PAIRS]
    assert len(rows) == PAIRS, f"the demo has {len(rows)} pairs, fewer than RLHF_DS_DPO_BENCH_PAIRS={PAIRS}"
    subset = root / "pairs.jsonl"
    subset.write_text("".join(rows))
    with open(paths["data_preference_eval"]) as f:
        (root / "eval_pairs.jsonl").write_text("".join(f.readlines()[:64]))
    return {"root": root, "model": paths["base_model"], "pairs": str(subset), "eval": str(root / "eval_pairs.jsonl")}


def _trl(demo, i):
    out = demo["root"] / f"trl_{i}.json"
    _run([sys.executable, TRL_SCRIPT, demo["model"], demo["pairs"], str(out)])
    return json.loads(out.read_text())


def _ours(demo, config, i, batch=32):
    """rlhf_ds's DPO on one process, as a user runs it (the deepspeed launcher and launch/train_dpo.py).
    pairs_per_s is what the stage logs at its last step (pairs trained / seconds since the first step
    began), cpu_pairs_per_s the same per CPU second; final_loss the mean training loss over the steps
    (TRL's train_loss is the same mean)."""
    work = demo["root"] / f"run_{config}_{i}"
    _run(deepspeed_cmd(DPO, [
        "--deepspeed", os.path.join(REPO, "configs", f"{config}.json"), f"--model.name_or_path={demo['model']}",
        f"--model.sft_model_path={demo['model']}", f"--dpo.data_path={demo['pairs']}", f"--dpo.eval_path={demo['eval']}",
        "--data.max_length=64", "--data.max_prompt_length=32", "--dpo.beta=0.1", "--dpo.learning_rate=5e-4",
        "--dpo.lr_scheduler=cosine", f"--dpo.batch_size={batch}", f"--dpo.max_steps={PAIRS // batch}",
        "--logging.log_interval=1", "--logging.progress=false", f"--save_dir={work}"], 1))
    with open(work / "logs" / "metrics.jsonl") as f:
        steps = [r for r in map(json.loads, f) if r.get("stage") == "dpo" and "pairs_per_s" in r]
    return {"pairs": steps[-1]["step"] * batch, "pairs_per_s": steps[-1]["pairs_per_s"],
            "pairs_per_cpu_s": steps[-1]["cpu_pairs_per_s"], "steps": steps[-1]["step"],
            "final_loss": sum(r["loss"] for r in steps) / len(steps), "config": config}


def test_dpo_throughput_against_trl(demo):
    runs = {"trl": []}
    runs.update({c: [] for c in CONFIGS})
    for i in range(REPEATS):                   # alternate, so that a change in the machine's load hits both
        runs["trl"].append(_trl(demo, i))
        for c in CONFIGS:
            runs[c].append(_ours(demo, c, i))
    for name, rs in runs.items():
        for r in rs:
            assert r["pairs"] == PAIRS, (name, r)
            assert math.isfinite(r["final_loss"]) and r["final_loss"] < math.log(2), (name, r)
    median = {name: statistics.median(r["pairs_per_s"] for r in rs) for name, rs in runs.items()}
    # Pairs per CPU second (all threads of the process): steadier than the wall clock on a shared machine.
    cpu = {name: statistics.median(r["pairs_per_cpu_s"] for r in rs) for name, rs in runs.items()}
    lines = [f"DPO training throughput, one process, {PAIRS} pairs, batch 32, max length 64 (medians of {REPEATS})",
             f"  {'':<28}{'pairs/s':>10}{'x TRL':>8}{'pairs/CPU-s':>13}{'x TRL':>8}"]
    for name, label in [("trl", "TRL 1.12 DPOTrainer")] + [(c, f"rlhf_ds, configs/{c}.json") for c in CONFIGS]:
        lines.append(f"  {label:<28}{median[name]:>10.1f}{median[name] / median['trl']:>8.2f}"
                     f"{cpu[name]:>13.1f}{cpu[name] / cpu['trl']:>8.2f}")
    head = CONFIGS[0]
    ratio = median[head] / median["trl"]
    lines.append(f"  target rlhf_ds ({head}) >= {TARGET}x TRL: {'PASS' if ratio >= TARGET else 'BELOW'} ({ratio:.2f}x)")
    print("\n" + "\n".join(lines))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pairs": PAIRS, "repeats": REPEATS,
                   "median_pairs_per_s": median, "ratio_to_trl": {c: median[c] / median["trl"] for c in CONFIGS},
                   "median_pairs_per_cpu_s": cpu, "cpu_ratio_to_trl": {c: cpu[c] / cpu["trl"] for c in CONFIGS},
                   "target": TARGET, "runs": runs}, f, indent=1)
