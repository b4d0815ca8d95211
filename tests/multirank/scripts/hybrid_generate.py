"""On every rank: greedy generation through the hybrid engine (ZeRO-3 actor) and through plain
ZeRO-3 generate, compared with the same weights as an unsharded model in this process.
Usage: hybrid_generate.py MODEL_DIR OUT_JSON BUCKET_MB"""
import json
import sys


from rlhf_ds.engine import (GenerationSettings, HybridEngine, build_train_engine, hf_generate, init_distributed,
                            shutdown_distributed)
from rlhf_ds.models.loading import load_causal_lm, load_tokenizer
from rlhf_ds.models.policy import PolicyModel

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds it
model_dir, out_path, bucket_mb = args[0], args[1], float(args[2])
info = init_distributed("cpu")
tok = load_tokenizer(model_dir)
engine = build_train_engine("actor", lambda: PolicyModel(load_causal_lm(model_dir, tokenizer=tok)),
                            {"zero_optimization": {"stage": 3}}, micro_batch_size=2, grad_accum=1,
                            precision="fp32", gradient_clipping=1.0, lr=1e-3, weight_decay=0.0, total_steps=1,
                            warmup_steps=0)
assert all(p.numel() == 0 or p.numel() < p.ds_numel for p in engine.module.parameters()), "not sharded"
prompts = ["describe the cat", "tell me about the river please", "the sun"]
texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
         for p in prompts]
tok.padding_side = "left"
enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
settings = GenerationSettings(max_new_tokens=16, do_sample=False)
hybrid = HybridEngine(engine, bucket_mb=bucket_mb)
with hybrid.generation_model() as copy:   # a caller still holding the copy after the block ...
    had_weights = all(p.numel() > 0 for p in copy.parameters())
storage_freed = had_weights and all(t.numel() == 0 for t in [*copy.parameters(), *copy.buffers()])  # ... holds no weights
del copy
out_hybrid = hybrid.generate(enc.input_ids, enc.attention_mask, settings, tok.eos_token_id, tok.pad_token_id)
engine.eval()
out_plain_z3 = hf_generate(engine.module.lm, enc.input_ids, enc.attention_mask, settings, tok.eos_token_id,
                           tok.pad_token_id, synced_gpus=True)
reference = load_causal_lm(model_dir, tokenizer=tok).eval()
out_ref = hf_generate(reference, enc.input_ids, enc.attention_mask, settings, tok.eos_token_id, tok.pad_token_id)
# The generation copy must be gone after the call: training memory comes back.
result = {"rank": info.rank, "world": info.world_size, "hybrid": out_hybrid.tolist(), "plain": out_plain_z3.tolist(),
          "reference": out_ref.tolist(), "copy_released": hybrid._plain is None and storage_freed,
          "still_sharded": all(p.numel() == 0 or p.numel() < p.ds_numel for p in engine.module.parameters())}
with open(f"{out_path}.rank{info.rank}", "w") as f:
    json.dump(result, f)
shutdown_distributed()   # every rank exits cleanly (a gloo peer that leaves first can abort the other)
