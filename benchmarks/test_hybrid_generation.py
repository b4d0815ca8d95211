"""Generation under ZeRO-3 on 2 ranks: the hybrid engine against plain ZeRO-3 `generate`.

Plain ZeRO-3 `generate` all-gathers every layer for every new token (and runs ZeRO's module
hooks each time); the hybrid engine gathers the shards once per rollout into a hook-free copy
and generates with the KV cache. Both run in the same launch, on the same sharded actor,
prompts and greedy settings; the hybrid figure includes its gather and release.

    pytest benchmarks/test_hybrid_generation.py

prints a table and writes benchmarks/results/hybrid_generation_<cpu|cuda>.json. The target (hybrid at
least 5x plain, in tokens per second) is reported as PASS or BELOW, never asserted: timings
on a shared machine are not a test. Asserted: identical token ids from both providers on
every rank, full-length outputs, a figure from each provider, the actor still sharded.

Defaults: a ~25M-parameter LLaMA, batch 16, prompts of up to 32 tokens, 32 new tokens, fp32,
configs/zero3.json, 1 warm-up + 3 timed calls per provider (medians). On a GPU node, scale up
with environment variables, e.g.
    RLHF_DS_HYBRID_HIDDEN=2048 RLHF_DS_HYBRID_LAYERS=16 RLHF_DS_HYBRID_INTERMEDIATE=5632 \\
    RLHF_DS_HYBRID_VOCAB=32000 RLHF_DS_HYBRID_BATCH=64 RLHF_DS_HYBRID_NEW_TOKENS=128 \\
    RLHF_DS_HYBRID_PRECISION=bf16 pytest benchmarks/test_hybrid_generation.py
(the full list is in scripts/hybrid_vs_zero3_generate.py; RLHF_DS_HYBRID_RANKS sets the rank count).
"""
import json
import os
import subprocess
import time
from datetime import datetime, timezone

import pytest
from launching import deepspeed_cmd

pytestmark = pytest.mark.multirank

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, "scripts", "hybrid_vs_zero3_generate.py")
RESULTS_DIR = os.path.join(HERE, "results")
TARGET_SPEEDUP = 5.0


def run_deepspeed(script: str, args, ranks: int, timeout: int) -> subprocess.CompletedProcess:
    """Run `script` on `ranks` local ranks through the real deepspeed launcher; raise with the
    tail of the output on failure."""
    cmd = deepspeed_cmd(script, args, ranks)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return proc


def format_table(res: dict) -> str:
    hy, pl = res["providers"]["hybrid"], res["providers"]["plain"]
    m, s = res["model"], res["shapes"]
    verdict = "PASS" if res["speedup"] >= TARGET_SPEEDUP else "BELOW"
    rows = [
        ("hybrid (gather + generate)", hy["median_s"], hy["tokens_per_s"], res["speedup"], hy["median_cpu_s"]),
        ("plain ZeRO-3 generate", pl["median_s"], pl["tokens_per_s"], 1.0, pl["median_cpu_s"]),
    ]
    lines = [
        f"hybrid engine vs plain ZeRO-3 generate on {res['device']}",
        f"  LLaMA {m['parameters'] / 1e6:.1f}M params (hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, "
        f"vocab {m['vocab_size']}), {res['precision']}, {res['ds_config']}; batch {s['batch']}, prompt <= "
        f"{s['prompt_len']}, {s['new_tokens']} new tokens, greedy; median of {res['repeats']} after "
        f"{res['warmup']} warm-up",
        f"  {'provider':<28}{'median s':>10}{'tokens/s':>11}{'hybrid/plain':>14}{'CPU s, all ranks':>18}",
    ]
    lines += [f"  {name:<28}{sec:>10.3f}{tps:>11.1f}{ratio:>13.2f}x{cpu_s:>18.2f}"
              for name, sec, tps, ratio, cpu_s in rows]
    lines.append(f"  hybrid split: gather {hy['median_gather_s']:.3f} s, generate {hy['median_generate_s']:.3f} s "
                 f"(medians); CPU-time ratio plain/hybrid {res['cpu_time_ratio']:.2f}x; 1-min load average {res['load_average_1min']['start']:.1f} -> "
                 f"{res['load_average_1min']['end']:.1f}")
    lines.append(f"  target >= {TARGET_SPEEDUP:.0f}x: {verdict} ({res['speedup']:.2f}x); token ids identical: "
                 f"{res['correct']}")
    return "\n".join(lines)


def test_hybrid_vs_plain_zero3_generation(tmp_path, capsys):
    ranks = int(os.environ.get("RLHF_DS_HYBRID_RANKS", "2"))
    out = tmp_path / "result.json"
    t0 = time.perf_counter()
    run_deepspeed(SCRIPT, [str(tmp_path), str(out)], ranks=ranks, timeout=1200)
    wall = time.perf_counter() - t0
    res = json.loads(out.read_text())

    # Correctness: both providers gave the same full-length ids, on every rank.
    assert res["world_size"] == ranks
    assert res["rows_mismatched_rank0"] == 0
    assert res["correct"], f"only {res['ranks_identical_and_correct']} of {ranks} ranks agree"
    assert res["shapes"]["output"] == [res["shapes"]["batch"], res["shapes"]["prompt_len"] + res["shapes"]["new_tokens"]]
    # The actor stayed sharded (the hybrid copy is released after each call).
    assert res["zero_stage"] == 3 and res["max_local_parameter_fraction"] < 1.0 / ranks + 0.05
    assert res["copy_released"]
    # A figure from each provider.
    for name in ("hybrid", "plain"):
        p = res["providers"][name]
        assert len(p["seconds"]) == res["repeats"] and all(t > 0 for t in p["seconds"])
        assert p["tokens_per_s"] > 0
    assert res["speedup"] > 0

    path = write_result(res, wall)
    with capsys.disabled():
        print("\n" + format_table(res) + f"\n  benchmark wall time {wall:.0f} s; written to "
              f"{os.path.relpath(path, REPO)}")


def write_result(res: dict, wall_s: float) -> str:
    """benchmarks/results/hybrid_generation_<cpu|cuda>.json, laid out like the kernel benchmarks'
    files (meta, rows, targets), with the script's full output under `details`."""
    hy, pl = res["providers"]["hybrid"], res["providers"]["plain"]
    meta = {"benchmark": "hybrid_generation", "device": res["device"], **res["versions"],
            "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_threads": res["threads_per_rank"], "benchmark_wall_s": wall_s,
            "notes": f"greedy, {res['precision']}, {res['ds_config']}, median of {res['repeats']} after "
                     f"{res['warmup']} warm-up; hybrid includes gather + release"}
    common = {**res["shapes"], "parameters": res["model"]["parameters"], "status": "ok"}
    rows = [{"provider": "hybrid", "median_s": hy["median_s"], "tokens_per_s": hy["tokens_per_s"],
             "ratio_vs_plain": res["speedup"], "median_gather_s": hy["median_gather_s"], **common},
            {"provider": "plain_zero3", "median_s": pl["median_s"], "tokens_per_s": pl["tokens_per_s"],
             "ratio_vs_plain": 1.0, **common}]
    targets = [{"target": f"hybrid tokens/s >= {TARGET_SPEEDUP:g}x plain ZeRO-3", "value": res["speedup"],
                "met": res["speedup"] >= TARGET_SPEEDUP}]
    slug = res["device_type"]
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"hybrid_generation_{slug}.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows, "targets": targets, "details": res}, f, indent=1)
    return path
