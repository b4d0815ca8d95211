"""End to end RL speed: rlhf_ds against TRL on the same run (issue 9).

    pytest benchmarks/test_e2e_rl.py -s

Identical random LLaMA policy (= reference), reward and value/critic models (benchmarks/scripts/
e2e_setup.py, loaded by both tools with `from_pretrained`), the same 512 demo prompts tokenized the
same way, the same batch sizes, response length and epochs, one process each on this machine:

    case          model                             per iteration                       rlhf_ds config
    ppo_4m_z2     4.3M (hidden 256, 4 layers)       16 prompts, 32 tokens, 1 epoch x 1  configs/zero2.json
    ppo_4m_z3     4.3M                              as above                            configs/zero3.json
    ppo_25m_z2    25M (hidden 512, 8 layers)        32 prompts, 64 tokens, 1 epoch x 1  configs/zero2.json
    grpo_4m_z2    4.3M                              16 prompts x 4 samples, 32 tokens   configs/zero2.json

PPO: rlhf_ds's RL stage (the real `train_rl`, scripts/e2e_rlhf_ds.py, through the deepspeed launcher)
against TRL 1.12's `trl.experimental.ppo.PPOTrainer` (scripts/e2e_trl.py; KL k1 at 0.05 in the reward,
lr 3e-6, GAE 1/0.95, value clip 0.2 in both). GRPO: rlhf_ds's grpo recipe (KL loss k3 at 0.04)
against `trl.GRPOTrainer` with beta 0.04, group 4, one iteration per generation.

The tools' processes start together, load their models side by side (untimed), then take turns
iteration by iteration (rlhf_ds, TRL, rlhf_ds, TRL, ...; scripts/e2e_baton.py): one runs while the
others sleep, so load from other work on a shared machine hits both alike. Each runs `WARMUP` untimed
iterations, then `TIMED` timed ones (RLHF_DS_E2E_ROUNDS repeats the whole, default 1).
Reported: medians over the timed iterations of all rounds of
  episodes/s  = completions per iteration / median iteration wall time,
  tokens/s    = completions x median response tokens (up to and including the first EOS) / median wall time,
  and the per-phase split: generation, experience (rewards, old/reference log-probs, values,
  advantages) and training (the update and the iteration's bookkeeping). How each tool's phases are
  timed without editing it is in each script's docstring. Also the fastest iteration of each tool and
  the ratio there: the figure least disturbed by other work on the machine.
The targets (PPO >= 1.5x TRL at ZeRO-2, >= 1.2x at ZeRO-3; GRPO >= 1.5x) are printed as PASS or
BELOW, never asserted: timings on a shared machine are not a test. Asserted: every run finished its
iterations with positive figures. Written to benchmarks/results/e2e_rl.json. On CUDA both tools run
in bf16. RLHF_DS_E2E_CASES=ppo_4m_z2,grpo_4m_z2 runs a subset; RLHF_DS_E2E_TOOLS=rlhf_ds,trl,rlhf_ds_twice
adds rlhf_ds with its actor/critic forward run twice (what trainers/rl_onestep.py saves), in the same rounds;
RLHF_DS_E2E_ROUNDS sets the rounds (default 2).
"""
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from launching import deepspeed_cmd

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPTS = os.path.join(HERE, "scripts")
RESULTS = os.path.join(HERE, "results", "e2e_rl.json")
ROUNDS = int(os.environ.get("RLHF_DS_E2E_ROUNDS", "1"))
# Tools run in each round, in this order. rlhf_ds_twice (opt-in): rlhf_ds with the actor's and critic's
# forward run twice per iteration (the general path), to measure what rl_onestep.py saves.
TOOLS = os.environ.get("RLHF_DS_E2E_TOOLS", "rlhf_ds,trl").split(",")

SIZES = {"4m": (256, 4, 1024), "25m": (512, 8, 1472)}      # hidden, layers, MLP width
CASES = {
    # name: (algo, size, ds config, prompts, new tokens, group, warm-up, timed, target)
    "ppo_4m_z2": ("ppo", "4m", "zero2.json", 16, 32, 1, 2, 10, 1.5),
    "ppo_4m_z3": ("ppo", "4m", "zero3.json", 16, 32, 1, 2, 10, 1.2),
    "ppo_25m_z2": ("ppo", "25m", "zero2.json", 32, 64, 1, 1, 6, 1.5),
    "grpo_4m_z2": ("grpo", "4m", "zero2.json", 16, 32, 4, 2, 8, 1.5),
}


def _env() -> dict:
    # The same thread count for both tools (the deepspeed launcher would otherwise choose its own).
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads,
            "TRL_EXPERIMENTAL_SILENCE": "1"}


def _run(cmd, timeout: int) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    pytest.importorskip("trl", reason="TRL is the baseline: pip install -e '.[bench]' installs TRL 1.12")
    from trl.experimental.ppo import PPOTrainer  # noqa: F401  (TRL 1.12 is the last release with PPOTrainer)
    root = tmp_path_factory.mktemp("e2e_rl")
    dirs = {}
    for size, (hidden, layers, mlp) in SIZES.items():
        d = root / size
        _run([sys.executable, os.path.join(SCRIPTS, "e2e_setup.py"), str(d), str(hidden), str(layers), str(mlp)], 600)
        dirs[size] = d
    return dirs


def tool_command(tool: str, work_dir, case: str, round_: int):
    """(command, result path) of one tool's process for `case`."""
    algo, _, ds_config, prompts, tokens, group, warmup, timed, _ = CASES[case]
    iters = warmup + timed
    out = os.path.join(str(work_dir), f"{case}_{tool}_{round_}.json")
    if tool.startswith("rlhf_ds"):
        cmd = deepspeed_cmd(os.path.join(SCRIPTS, "e2e_rlhf_ds.py"),
                            [str(work_dir), algo, os.path.join(REPO, "configs", ds_config), str(iters), str(prompts),
                             str(tokens), str(group), out, *(["twice"] if tool == "rlhf_ds_twice" else [])], 1)
    else:
        cmd = [sys.executable, os.path.join(SCRIPTS, "e2e_trl.py"), str(work_dir), algo, str(iters), str(prompts),
               str(tokens), str(group), out]
    return cmd, out


def run_round(tools, work_dir, case: str, round_: int, tmp) -> dict:
    """Every tool's process at once, taking turns iteration by iteration (scripts/e2e_baton.py)."""
    baton = tmp / f"baton_{case}_{round_}"
    baton.mkdir()
    procs = {}
    for tool in tools:
        cmd, out = tool_command(tool, work_dir, case, round_)
        env = {**_env(), "RLHF_DS_E2E_BATON_DIR": str(baton), "RLHF_DS_E2E_BATON_NAME": tool,
               "RLHF_DS_E2E_BATON_ORDER": ",".join(tools)}
        log = open(str(baton / f"{tool}.log"), "w")
        procs[tool] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), out, log)
    results = {}
    try:
        for tool, (proc, out, log) in procs.items():
            rc = proc.wait(timeout=3600)
            log.close()
            if rc != 0:
                tail = open(str(baton / f"{tool}.log")).read()[-6000:]
                raise AssertionError(f"{tool} exited {rc}:\n{tail}")
            results[tool] = json.loads(open(out).read())
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
    warmup, timed = CASES[case][6], CASES[case][7]
    for tool, res in results.items():
        assert len(res["iteration_s"]) == warmup + timed and all(t > 0 for t in res["iteration_s"]), \
            (tool, res["iteration_s"])
        res["timed"] = list(range(warmup, warmup + timed))
    return results


def summarise(runs: list, tokens_default: int) -> dict:
    """Medians over the timed iterations of every run of one tool: episodes/s and tokens/s from the
    median iteration time (so the columns agree), each phase's median; and, less sensitive to other
    work on the machine, the same rates from the fastest iteration."""
    walls, phases, lengths = [], {"generation": [], "experience": [], "training": []}, []
    n = runs[0]["episodes_per_iteration"]
    for res in runs:
        for i in res["timed"]:
            wall, ph = res["iteration_s"][i], res["phases"][i]
            walls.append(wall)
            lengths.append((res["response_length"] or [tokens_default] * len(res["iteration_s"]))[i])
            phases["generation"].append(ph["generation"])
            # rlhf_ds times rewards apart from the rest of the experience; TRL scores inside its experience.
            phases["experience"].append(ph["experience"] + ph.get("rewards", 0.0))
            # The loop's bookkeeping outside the named phases (metrics, reductions) goes with training.
            phases["training"].append(wall - ph["generation"] - ph["experience"] - ph.get("rewards", 0.0))
    med = statistics.median
    return {"iteration_s": med(walls), "episodes_per_s": n / med(walls), "tokens_per_s": n * med(lengths) / med(walls),
            "response_length": med(lengths), **{f"{k}_s": med(v) for k, v in phases.items()},
            "best_iteration_s": min(walls), "best_episodes_per_s": n / min(walls),
            "iterations": len(walls), "all_iteration_s": walls}


def format_rows(case: str, ours: dict, trl: dict, ratio: float, target: float, extra: dict) -> str:
    algo, size, ds_config, prompts, tokens, group, *_ = CASES[case]
    head = (f"{case}: {algo.upper()} {size} params, {prompts} prompts x {group} x {tokens} tokens/iteration, "
            f"rlhf_ds {ds_config}; medians of {ours['iterations']} / {trl['iterations']} iterations")
    cols = (f"  {'tool':<14}{'episodes/s':>11}{'tokens/s':>10}{'resp len':>9}{'gen s':>8}{'exp s':>8}{'train s':>9}"
            f"{'iter s':>8}{'best iter s':>12}")
    rows = [f"  {name:<14}{r['episodes_per_s']:>11.2f}{r['tokens_per_s']:>10.1f}{r['response_length']:>9.1f}"
            f"{r['generation_s']:>8.2f}{r['experience_s']:>8.2f}{r['training_s']:>9.2f}{r['iteration_s']:>8.2f}"
            f"{r['best_iteration_s']:>12.2f}"
            for name, r in (("rlhf_ds", ours), ("TRL", trl), *extra.items())]
    verdict = "PASS" if ratio >= target else "BELOW"
    best = ours["best_episodes_per_s"] / trl["best_episodes_per_s"]
    return "\n".join([head, cols, *rows, f"  rlhf_ds / TRL episodes/s: {ratio:.2f}x at the median iteration (target >= "
                                          f"{target}x: {verdict}), {best:.2f}x at the fastest"])


def _selected():
    wanted = os.environ.get("RLHF_DS_E2E_CASES")
    return [c for c in CASES if not wanted or c in wanted.split(",")]


@pytest.mark.parametrize("case", _selected())
def test_e2e_rl_vs_trl(case, work, capsys, tmp_path):
    algo, size, *_ = CASES[case]
    target = CASES[case][-1]
    t0 = time.perf_counter()
    tools = ["rlhf_ds", "trl"] + [t for t in TOOLS if t not in ("rlhf_ds", "trl")]
    runs = {tool: [] for tool in tools}
    for r in range(ROUNDS):
        for tool, res in run_round(tools, work[size], case, r, tmp_path).items():
            runs[tool].append(res)
    wall = time.perf_counter() - t0
    tokens = CASES[case][4]
    ours, trl = summarise(runs["rlhf_ds"], tokens), summarise(runs["trl"], tokens)
    extra = {t: summarise(runs[t], tokens) for t in tools[2:]}
    for r in (ours, trl):
        assert r["episodes_per_s"] > 0 and r["tokens_per_s"] > 0 and r["generation_s"] > 0
    ratio = ours["episodes_per_s"] / trl["episodes_per_s"]
    write_result(case, ours, trl, ratio, target, runs, wall, json.loads((work[size] / "setup.json").read_text()), extra)
    with capsys.disabled():
        print("\n" + format_rows(case, ours, trl, ratio, target, extra) + f"\n  benchmark wall time {wall:.0f} s; "
              f"written to {os.path.relpath(RESULTS, REPO)}")


def write_result(case, ours, trl, ratio, target, runs, wall, setup, extra) -> None:
    """benchmarks/results/e2e_rl.json: one entry per case (a later run of a case replaces its entry)."""
    import torch
    import trl as trl_pkg
    import deepspeed
    import transformers

    data = {}
    if os.path.exists(RESULTS):
        try:
            data = json.loads(open(RESULTS).read())
        except ValueError:
            data = {}
    algo, size, ds_config, prompts, tokens, group, warmup, timed, _ = CASES[case]
    data.setdefault("cases", {})[case] = {
        "meta": {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "device": runs["rlhf_ds"][0]["device"], "precision": runs["rlhf_ds"][0]["precision"],
                 "threads": runs["rlhf_ds"][0]["threads"], "torch": torch.__version__, "trl": trl_pkg.__version__,
                 "deepspeed": deepspeed.__version__, "transformers": transformers.__version__,
                 "load_average_1min": os.getloadavg()[0], "benchmark_wall_s": wall, "rounds": ROUNDS,
                 "warmup_iterations": warmup, "timed_iterations": timed},
        "setup": {"algo": algo, "model": setup, "ds_config": ds_config, "prompts_per_iteration": prompts,
                  "new_tokens": tokens, "group": group},
        "rlhf_ds": ours, "trl": trl, **extra,
        "ratio_episodes_per_s": ratio, "ratio_tokens_per_s": ours["tokens_per_s"] / trl["tokens_per_s"],
        "ratio_best_episodes_per_s": ours["best_episodes_per_s"] / trl["best_episodes_per_s"],
        "target": {"episodes_per_s_ratio": target, "met": ratio >= target},
        "runs": runs,
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(data, f, indent=1)
