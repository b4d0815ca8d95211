"""On every rank of a ZeRO-3 run: generation throughput of the hybrid engine against plain ZeRO-3 `generate`.

Usage (through the deepspeed launcher, which adds --local_rank):
    deepspeed --num_gpus 2 benchmarks/scripts/hybrid_vs_zero3_generate.py WORK_DIR OUT_JSON

1. rank 0 builds a randomly initialised LLaMA from a transformers config and saves it with
   `save_pretrained`; every rank then loads it through rlhf_ds (`build_train_engine` with ZeRO-3),
   so each rank holds only its shard, exactly as the PPO actor does.
2. The same random left-padded prompts on every rank; greedy; EOS is masked until `max_new_tokens`
   (min_new_tokens = max_new_tokens), so every call generates the full length.
3. Providers, interleaved so drift on a shared machine hits both alike: warm-up once each, then
   `repeats` timed calls each. A call's time is the slowest rank's (the ranks wait for one another):
     hybrid: `HybridEngine.generate`, which gathers the shards into a hook-free copy, generates with
             the KV cache and releases the copy: the cost of one rollout.
     plain:  `hf_generate(engine.module.lm, ..., synced_gpus=True)` on the ZeRO-3 engine, where the
             parameter hooks all-gather every layer for every new token.
4. Both must produce identical token ids, equal on all ranks. Rank 0 writes OUT_JSON.

Sizes come from environment variables (defaults: ~25M parameters, batch 16, 32 new tokens), so a GPU
run can use a real size:
    RLHF_DS_HYBRID_BATCH, RLHF_DS_HYBRID_NEW_TOKENS, RLHF_DS_HYBRID_PROMPT_LEN, RLHF_DS_HYBRID_REPEATS,
    RLHF_DS_HYBRID_HIDDEN, RLHF_DS_HYBRID_LAYERS, RLHF_DS_HYBRID_HEADS, RLHF_DS_HYBRID_KV_HEADS,
    RLHF_DS_HYBRID_INTERMEDIATE, RLHF_DS_HYBRID_VOCAB, RLHF_DS_HYBRID_PRECISION (fp32|bf16|fp16),
    RLHF_DS_HYBRID_BUCKET_MB (the hybrid engine's gather bucket; 0: all at once),
    RLHF_DS_HYBRID_DS_CONFIG (the DeepSpeed JSON; default configs/zero3.json, what training runs use).
"""
import json
import os
import platform
import statistics
import sys
import time

import torch

from rlhf_ds.engine import (GenerationSettings, HybridEngine, all_reduce_max, all_reduce_sum, barrier,
                            broadcast_object, build_train_engine, hf_generate, init_distributed,
                            shutdown_distributed)
from rlhf_ds.engine.ds_config import dtype_of, load_ds_config, zero_stage
from rlhf_ds.models.loading import load_causal_lm, quiet_transformers
from rlhf_ds.models.policy import PolicyModel

PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"RLHF_DS_HYBRID_{name}", default))


def settings_from_env() -> dict:
    return {
        "batch": env_int("BATCH", 16),
        "new_tokens": env_int("NEW_TOKENS", 32),
        "prompt_len": env_int("PROMPT_LEN", 32),
        "repeats": env_int("REPEATS", 3),
        "precision": os.environ.get("RLHF_DS_HYBRID_PRECISION", "fp32"),
        "bucket_mb": float(os.environ.get("RLHF_DS_HYBRID_BUCKET_MB", "0")),
        "ds_config": os.environ.get("RLHF_DS_HYBRID_DS_CONFIG", os.path.join(REPO, "configs", "zero3.json")),
        "model": {
            "vocab_size": env_int("VOCAB", 8192),
            "hidden_size": env_int("HIDDEN", 512),
            "num_hidden_layers": env_int("LAYERS", 6),
            "num_attention_heads": env_int("HEADS", 8),
            "num_key_value_heads": env_int("KV_HEADS", 4),
            "intermediate_size": env_int("INTERMEDIATE", 1280),
        },
    }


def save_random_llama(model_dir: str, shape: dict, max_positions: int) -> int:
    """A randomly initialised LLaMA saved in the hub format; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    quiet_transformers()
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=max_positions, tie_word_embeddings=False,
                         pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID)
    model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def left_padded_prompts(batch: int, prompt_len: int, vocab: int):
    """Random ids (never a special id) of random lengths in [prompt_len / 2, prompt_len], left-padded."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(max(1, prompt_len // 2), prompt_len + 1, (batch,), generator=g)
    lengths[0] = prompt_len
    ids = torch.randint(3, vocab, (batch, prompt_len), generator=g)
    mask = (torch.arange(prompt_len)[None, :] >= prompt_len - lengths[:, None]).long()
    return ids.masked_fill(mask == 0, PAD_ID), mask


def device_description(info) -> str:
    if info.device.type == "cuda":
        return f"{info.world_size} x {torch.cuda.get_device_name(info.device)} ({info.backend})"
    return (f"{info.world_size} CPU ranks ({info.backend}), {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} thread(s) per rank")


def display_path(path: str) -> str:
    """Relative to the repository when inside it (configs/zero3.json), else absolute."""
    rel = os.path.relpath(os.path.abspath(path), REPO)
    return os.path.abspath(path) if rel.startswith("..") else rel


def local_fraction(module) -> float:
    """Share of the model's parameters this rank stores (about 1 / world size when sharded)."""
    params = list(module.parameters())
    return sum(p.ds_tensor.numel() for p in params) / sum(p.ds_numel for p in params)


def timed(fn):
    """(result, wall seconds of the slowest rank, CPU seconds summed over ranks): every rank starts
    together and waits for the others. CPU seconds are a diagnostic for a shared machine, where other
    processes stretch wall time; wall time is the figure."""
    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, float(all_reduce_max(wall)), float(all_reduce_sum(cpu))


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds it
    work_dir, out_path = args[0], args[1]
    cfg = settings_from_env()
    info = init_distributed("auto")
    model_dir = os.path.join(work_dir, "model")
    n_params = 0
    if info.is_main:
        n_params = save_random_llama(model_dir, cfg["model"], cfg["prompt_len"] + cfg["new_tokens"])
    n_params = broadcast_object(n_params)
    barrier()
    load_at_start = os.getloadavg()

    # 1. the actor as PPO holds it: a ZeRO-3 training engine, sharded from construction on.
    ds_config = load_ds_config(cfg["ds_config"])
    if zero_stage(ds_config) != 3:
        raise ValueError(f"{cfg['ds_config']}: this benchmark compares generation under ZeRO-3; the file sets "
                         f"stage {zero_stage(ds_config)}")
    dtype = dtype_of(cfg["precision"])
    engine = build_train_engine("actor", lambda: PolicyModel(load_causal_lm(model_dir, dtype=dtype)), ds_config,
                                micro_batch_size=cfg["batch"], grad_accum=1, precision=cfg["precision"],
                                gradient_clipping=1.0, lr=1e-5, weight_decay=0.0, total_steps=1, warmup_steps=0,
                                source=cfg["ds_config"])
    shard_fraction = local_fraction(engine.module)

    # 2. prompts and settings
    input_ids, attention_mask = left_padded_prompts(cfg["batch"], cfg["prompt_len"], cfg["model"]["vocab_size"])
    input_ids, attention_mask = input_ids.to(engine.device), attention_mask.to(engine.device)
    n = cfg["new_tokens"]
    settings = GenerationSettings(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    hybrid = HybridEngine(engine, bucket_mb=cfg["bucket_mb"])

    def run_hybrid():
        return hybrid.generate(input_ids, attention_mask, settings, EOS_ID, PAD_ID)

    def run_plain():
        engine.eval()
        try:
            return hf_generate(engine.module.lm, input_ids, attention_mask, settings, EOS_ID, PAD_ID,
                               synced_gpus=True)
        finally:
            engine.train()

    # 3. warm-up, then interleaved timed repeats
    times = {"hybrid": [], "plain": []}
    cpu = {"hybrid": [], "plain": []}
    gather_s, generate_s = [], []
    outputs = {"hybrid": run_hybrid(), "plain": run_plain()}
    for _ in range(cfg["repeats"]):
        for name, fn in (("hybrid", run_hybrid), ("plain", run_plain)):
            outputs[name], t, c = timed(fn)
            times[name].append(t)
            cpu[name].append(c)
            if name == "hybrid":
                gather_s.append(float(all_reduce_max(hybrid.last_gather_s)))
                generate_s.append(float(all_reduce_max(hybrid.last_generate_s)))

    # 4. correctness: identical ids from both providers, full length, the same on every rank
    expected_shape = [cfg["batch"], cfg["prompt_len"] + n]
    rank0_ids = broadcast_object(outputs["hybrid"].tolist())   # a collective: every rank calls it
    ok_here = (outputs["hybrid"].shape == outputs["plain"].shape
               and torch.equal(outputs["hybrid"], outputs["plain"])
               and list(outputs["hybrid"].shape) == expected_shape
               and outputs["hybrid"].tolist() == rank0_ids)
    ranks_ok = int(all_reduce_sum(float(ok_here)))
    # Each rank still stores only its shard after both providers ran, and the hybrid copy is gone.
    shard_fraction = float(all_reduce_max(max(shard_fraction, local_fraction(engine.module))))
    copies_released = int(all_reduce_sum(float(hybrid._plain is None)))
    mismatched = int((outputs["hybrid"] != outputs["plain"]).any(dim=1).sum()) \
        if outputs["hybrid"].shape == outputs["plain"].shape else -1

    if info.is_main:
        tokens = cfg["batch"] * n
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "benchmark": "hybrid engine vs plain ZeRO-3 generate (greedy, KV cache)",
            "device": device_description(info), "device_type": info.device.type,
            "world_size": info.world_size,
            "threads_per_rank": torch.get_num_threads() if info.device.type == "cpu" else None,
            "platform": platform.platform(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "deepspeed": __import__("deepspeed").__version__,
                         "transformers": __import__("transformers").__version__},
            "model": {"arch": "LlamaForCausalLM", "parameters": n_params, **cfg["model"]},
            "shapes": {"batch": cfg["batch"], "prompt_len": cfg["prompt_len"], "new_tokens": n,
                       "generated_tokens_per_call": tokens, "output": list(outputs["hybrid"].shape)},
            "load_average_1min": {"start": load_at_start[0], "end": os.getloadavg()[0]},
            "precision": cfg["precision"], "zero_stage": engine.zero_stage,
            "ds_config": display_path(cfg["ds_config"]), "gather_bucket_mb": cfg["bucket_mb"],
            "repeats": cfg["repeats"], "warmup": 1,
            "providers": {
                "hybrid": {"what": "HybridEngine.generate: gather + generate + release", "seconds": times["hybrid"],
                           "median_s": med["hybrid"], "tokens_per_s": tokens / med["hybrid"],
                           "cpu_s_all_ranks": cpu["hybrid"], "median_cpu_s": statistics.median(cpu["hybrid"]),
                           "gather_s": gather_s, "median_gather_s": statistics.median(gather_s),
                           "generate_s": generate_s, "median_generate_s": statistics.median(generate_s)},
                "plain": {"what": "hf_generate(engine.module.lm, synced_gpus=True) under ZeRO-3",
                          "seconds": times["plain"], "median_s": med["plain"], "tokens_per_s": tokens / med["plain"],
                          "cpu_s_all_ranks": cpu["plain"], "median_cpu_s": statistics.median(cpu["plain"])},
            },
            "speedup": med["plain"] / med["hybrid"],
            "cpu_time_ratio": statistics.median(cpu["plain"]) / statistics.median(cpu["hybrid"]),
            "correct": ranks_ok == info.world_size, "ranks_identical_and_correct": ranks_ok,
            "rows_mismatched_rank0": mismatched, "max_local_parameter_fraction": shard_fraction,
            "copy_released": copies_released == info.world_size,
        }
        with open(out_path, "w") as f:
            json.dump(result, f, indent=2)
    barrier()


if __name__ == "__main__":
    main()
    shutdown_distributed()
