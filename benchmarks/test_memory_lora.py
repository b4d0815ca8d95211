"""Peak memory of one PPO iteration: full fine-tuning, LoRA and QLoRA on the same model, same run.

    pytest benchmarks/test_memory_lora.py -s

Each mode runs in a fresh process (benchmarks/scripts/ppo_memory_iteration.py), one after the other,
on a ~50M-parameter LLaMA built here from a config (weights dominate: vocabulary 1024, 10 blocks
of hidden 640). Every mode uses the same engines code as training (ZeRO-0 from
configs/qlora_single_gpu.json, one rank), the same rollout (8 prompts of 24 tokens, 24 new
tokens) and one PPO update (one minibatch of 8, micro-batches of 4).

CPU: peak resident memory (RSS) while the iteration runs, the engines and models included (the
kernel's high-water mark, reset after setup, see the script), MINUS the baseline: the peak RSS of a
process that only imports the stack (torch, transformers, peft, bitsandbytes, deepspeed, rlhf_ds)
and starts the process group, measured the same way. The process peak (loading included) is
reported beside it. The marks are VmHWM, not ru_maxrss: a child's ru_maxrss includes its parent's
RSS at fork on Linux (measured here: ~840 MiB for every child of pytest, whatever it did).
CUDA: torch.cuda.max_memory_allocated (no baseline needed).

The target, QLoRA peak <= 35% of full fine-tuning's, is reported as PASS or BELOW, not asserted
(a figure on a shared machine is not a test); asserted: every mode ran, losses are finite, and the
ordering full > LoRA > QLoRA. Results: benchmarks/results/memory_lora_<cpu|cuda>.json.
"""
import json
import math
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, "scripts", "ppo_memory_iteration.py")
RESULTS_DIR = os.path.join(HERE, "results")
TARGET = 0.35
MODES = ("baseline", "full", "lora", "qlora", "qlora_shared")
SHAPE = dict(hidden_size=640, num_hidden_layers=10, num_attention_heads=10, num_key_value_heads=10,
             intermediate_size=1728, vocab_size=1024, max_position_embeddings=256)


def build_models(policy_dir: str, reward_dir: str) -> int:
    """A random LLaMA (the SFT policy) and the same backbone with a seeded `score` head (the reward model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    config = LlamaConfig(**SHAPE, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(policy_dir)
        rm = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
        torch.nn.init.normal_(rm.score.weight, std=config.hidden_size ** -0.5)
        rm.save_pretrained(reward_dir)
    return sum(p.numel() for p in model.parameters())


def run_mode(mode: str, model_dir: str, reward_dir: str, out: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, SCRIPT, mode, model_dir, reward_dir, out], cwd=HERE, env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{mode} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-5000:]}")
    with open(out) as f:
        return json.load(f)


def estimated_mib(mode: str) -> float:
    """What rlhf_ds.memory_estimate predicts for the same run (CPU: no CUDA overhead term)."""
    from rlhf_ds.lora_settings import LoRASettings
    from rlhf_ds.memory_estimate import Architecture, Plan, estimate

    arch = Architecture.from_hf_config({**SHAPE, "model_type": "llama", "tie_word_embeddings": False})
    lora = {"full": {"r": 0}, "lora": {"r": 16}, "qlora": {"r": 16, "quantization": "nf4"},
            "qlora_shared": {"r": 16, "quantization": "nf4", "share_critic_reward_backbone": True}}[mode]
    plan = Plan(world_size=1, zero_stage=0, precision="fp32", micro_batch=4, max_length=48, prompt_length=24,
                new_tokens=24, rollout_per_rank=8,
                lora=LoRASettings(apply_to=frozenset({"actor", "critic"}), **lora))
    return estimate(arch, plan, "ppo", device_type="cpu").peak / 2**20


def table(res: dict) -> str:
    rows, cuda = res["modes"], res["device"] != "cpu"
    unit = "MiB"
    lines = [f"PPO iteration peak memory on {res['device']}: LLaMA {res['parameters'] / 1e6:.1f}M params, "
             f"{'CUDA max allocated' if cuda else 'peak RSS minus baseline'} "
             f"(baseline {res['baseline_mib']:.0f} {unit})" if not cuda else
             f"PPO iteration peak memory on {res['device']}: LLaMA {res['parameters'] / 1e6:.1f}M params, CUDA max "
             f"allocated",
             f"  {'mode':<14}{'iteration peak':>16}{'vs full':>9}{'process peak':>14}{'estimate':>10}"
             f"{'trained params':>16}{'iteration s':>13}"]
    for mode in MODES[1:]:
        r = rows[mode]
        lines.append(f"  {mode:<14}{r['peak_mib']:>12.0f} {unit}{r['ratio']:>9.1%}{r['process_peak_mib']:>10.0f} {unit}"
                     f"{r['estimate_mib']:>6.0f} {unit}{r['trained_params'] / 1e6:>14.2f}M{r['iteration_s']:>13.1f}")
    verdict = "PASS" if rows["qlora"]["ratio"] <= TARGET else "BELOW"
    lines.append("  (estimate: python -m rlhf_ds.memory's model of the same run; iteration s: wall time on a "
                 "shared machine, indicative only)")
    lines.append(f"  target: QLoRA <= {TARGET:.0%} of full fine-tuning: {rows['qlora']['ratio']:.1%} -> {verdict}")
    return "\n".join(lines)


@pytest.mark.slow
def test_ppo_iteration_peak_memory_full_lora_qlora(tmp_path):
    model_dir, reward_dir = str(tmp_path / "llama"), str(tmp_path / "reward")
    n_params = build_models(model_dir, reward_dir)
    raw = {m: run_mode(m, model_dir, reward_dir, str(tmp_path / f"{m}.json")) for m in MODES}
    device = raw["full"]["device"]
    cuda = device != "cpu"
    base_kb = raw["baseline"]["hwm_kb"]
    modes = {}
    for m in MODES[1:]:
        r = raw[m]
        assert math.isfinite(r["policy_loss"]) and math.isfinite(r["value_loss"]), m
        if cuda:
            peak, process_peak = r["iteration_max_allocated"], max(r["iteration_max_allocated"],
                                                                    r["setup_max_allocated"])
        else:
            assert r["hwm_reset"], "cannot reset the RSS high-water mark (/proc/self/clear_refs)"
            iteration = r["iteration_hwm_kb"]
            peak, process_peak = (iteration - base_kb) * 1024, (max(iteration, r["setup_hwm_kb"]) - base_kb) * 1024
        modes[m] = {"peak_mib": peak / 2**20, "process_peak_mib": process_peak / 2**20,
                    "trained_params": sum(r["trainable_params"].values()), "iteration_s": r["iteration_s"],
                    "models": r["models"], "estimate_mib": estimated_mib(m), "raw": r}
    for m in modes:
        modes[m]["ratio"] = modes[m]["peak_mib"] / modes["full"]["peak_mib"]
    res = {"device": device, "parameters": n_params, "shape": SHAPE, "baseline_mib": base_kb / 1024,
           "modes": modes, "target_ratio": TARGET, "time": datetime.now(timezone.utc).isoformat()}
    text = table(res)
    print("\n" + text)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, f"memory_lora_{'cuda' if cuda else 'cpu'}.json"), "w") as f:
        json.dump({**res, "table": text}, f, indent=2)
    assert modes["full"]["peak_mib"] > modes["lora"]["peak_mib"] > modes["qlora"]["peak_mib"] > 0
    assert modes["qlora"]["models"]["reference"] == "ReferenceFromActor"
    assert modes["qlora_shared"]["models"]["reward"] == "RewardFromCritic"
