"""On every rank: a tokenizer without a pad token (Llama-2/Mistral style) gets one added by
load_tokenizer; the ZeRO-3 actor (training engine) and reward model (inference engine) built from it
must have the pad row in their embeddings, and a padded forward must give what an unpadded one gives.
Usage: pad_token_resize.py MODEL_DIR OUT_JSON"""
import json
import sys

import torch

from rlhf_ds.engine import build_inference_engine, build_train_engine, init_distributed, shutdown_distributed
from rlhf_ds.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
from rlhf_ds.models.policy import PolicyModel
from rlhf_ds.models.scalar_head import ScalarHeadModel

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds it
model_dir, out_path = args[0], args[1]
info = init_distributed("cpu")
tok = load_tokenizer(model_dir)
ds = {"zero_optimization": {"stage": 3}}
actor = build_train_engine("actor", lambda: PolicyModel(load_causal_lm(model_dir, tokenizer=tok)), ds,
                           micro_batch_size=2, grad_accum=1, precision="fp32", gradient_clipping=1.0, lr=1e-3,
                           weight_decay=0.0, total_steps=1, warmup_steps=0)
reward = build_inference_engine("reward", lambda: ScalarHeadModel(load_scalar_model(model_dir, tokenizer=tok)), ds,
                                micro_batch_size=2, precision="fp32")


def rows(engine, get):
    w = get(engine.module)
    with engine.gathered([w]):
        return {"rows": int(w.shape[0]), "sharded": int(getattr(w, "ds_numel", 0)) > 0,
                "new_row_finite": bool(torch.isfinite(w[-1]).all()) if w.dim() == 2 else None}


# Two rows, the second right-padded with the pad id (which is one past the original vocabulary).
a = tok("the cat is warm and the river is cold", add_special_tokens=False).input_ids
b = a[:4]
ids = torch.tensor([a, b + [tok.pad_token_id] * (len(a) - len(b))])
mask = torch.tensor([[1] * len(a), [1] * len(b) + [0] * (len(a) - len(b))])
actor.eval()
with torch.no_grad():
    padded_lp = actor(ids, mask)["logprobs"]
    alone_lp = actor(ids[1:, :len(b)], mask[1:, :len(b)])["logprobs"]
    padded_score = reward(ids, mask)["scores"]
    alone_score = reward(ids[1:, :len(b)], mask[1:, :len(b)])["scores"]
# One training step through the resized (then partitioned) embedding and head.
actor.train()
loss = -(actor(ids, mask)["logprobs"] * mask[:, 1:]).sum() / mask[:, 1:].sum()
actor.backward(loss)
actor.step()
trained = rows(actor, lambda m: m.lm.get_input_embeddings().weight)
result = {
    "world": info.world_size, "len_tokenizer": len(tok), "pad_id": tok.pad_token_id,
    "actor_embed": rows(actor, lambda m: m.lm.get_input_embeddings().weight),
    "actor_head": rows(actor, lambda m: m.lm.get_output_embeddings().weight),
    "reward_embed": rows(reward, lambda m: m.model.get_input_embeddings().weight),
    "actor_pad_id": actor.module.lm.config.pad_token_id, "reward_pad_id": reward.module.model.config.pad_token_id,
    "padded_logprobs": padded_lp[1, :len(b) - 1].tolist(), "alone_logprobs": alone_lp[0].tolist(),
    "padded_score": float(padded_score[1]), "alone_score": float(alone_score[0]),
    "trained_finite": trained["new_row_finite"],
    "finite": bool(torch.isfinite(padded_lp).all() and torch.isfinite(padded_score).all()),
}
with open(f"{out_path}.rank{info.rank}", "w") as f:
    json.dump(result, f)
shutdown_distributed()   # every rank exits cleanly (a gloo peer that leaves first can abort the other)
