"""TRL's side of the end-to-end RL benchmark (benchmarks/test_e2e_rl.py): TRL 1.12's PPOTrainer
(`trl.experimental.ppo`) or GRPOTrainer on the inputs of e2e_setup.py, one process (plain python:
accelerate's single-process default; TRL is not given DeepSpeed).

Usage: python e2e_trl.py WORK_DIR ALGO ITERATIONS PROMPTS NEW_TOKENS GROUP OUT_JSON

The prompts are the same token ids rlhf_ds trains on: rlhf_ds's own PromptDataset tokenizes
prompts.jsonl, and TRL is given its `input_ids` (PPO; TRL's collator left-pads them) or, for GRPO,
which tokenizes text itself, the same prompt strings.

Timing, without editing TRL (wrappers around what its trainers call):
  PPO: an iteration runs from one `on_step_end` callback to the next (the first from `on_train_begin`);
       generation ends when `ppo_trainer.batch_generation` returns (so it includes the data loader and
       the generation context's entry); training starts at the first call of `ppo_trainer.forward`
       with the policy-and-value wrapper (the update's forward; the reference forward passes the
       reference model); experience is what lies between.
  GRPO: the iteration boundaries likewise; generation is `GRPOTrainer._generate` (sampling, decoding);
       experience is the rest of `_generate_and_score_completions` (rewards, old and reference
       log-probs, advantages); training is the rest of the step (loss, backward, optimizer, logging).
With the RLHF_DS_E2E_BATON_* variables set, each iteration waits for its turn first (e2e_baton.py),
untimed.
"""
import json
import os
import sys
import time

WORK, ALGO, ITERS, PROMPTS, NEW_TOKENS, GROUP, OUT = sys.argv[1:8]
ITERS, PROMPTS, NEW_TOKENS, GROUP = int(ITERS), int(PROMPTS), int(NEW_TOKENS), int(GROUP)


class Clock:
    """Per-iteration phase boundaries, filled by the wrappers and the callback."""

    def __init__(self):
        self.iter_start = None
        self.gen_end = None
        self.train_start = None
        self.gen_s = 0.0
        self.exp_s = 0.0
        self.rows = []

    def begin(self):
        self.iter_start = time.perf_counter()
        self.gen_end = self.train_start = None
        self.gen_s = self.exp_s = 0.0

    def end(self, extra=None):
        now = time.perf_counter()
        row = {"iteration_s": now - self.iter_start}
        if ALGO == "ppo":
            row.update(generation=self.gen_end - self.iter_start, experience=self.train_start - self.gen_end,
                       training=now - self.train_start)
        else:
            row.update(generation=self.gen_s, experience=self.exp_s,
                       training=row["iteration_s"] - self.gen_s - self.exp_s)
        row.update(extra or {})
        self.rows.append(row)
        self.iter_start = now
        self.gen_end = self.train_start = None
        self.gen_s = self.exp_s = 0.0


def prompt_ids(tok):
    """rlhf_ds's tokenization of prompts.jsonl: the ids its RL loop trains on."""
    import logging

    from rlhf_ds.data.dataset import PromptDataset
    from rlhf_ds.trainers.data_prep import load_stage_records

    records = load_stage_records(os.path.join(WORK, "prompts.jsonl"), "prompt", None, False,
                                 logging.getLogger("e2e"), "prompts")
    ds = PromptDataset(records, tok, 128)
    return [list(map(int, ds[i].input_ids)) for i in range(len(ds))], [ds[i].text for i in range(len(ds))]


def main() -> None:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)

    from rlhf_ds.models.loading import quiet_transformers

    quiet_transformers()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(os.path.join(WORK, "tokenizer"))
    tok.padding_side = "left"
    ids, texts = prompt_ids(tok)
    clock = Clock()
    lengths = []

    from e2e_baton import Baton

    baton = Baton()

    class Boundaries(TrainerCallback):
        steps = 0

        def on_train_begin(self, args, state, control, **kw):
            baton.take()
            clock.begin()

        def on_step_end(self, args, state, control, **kw):
            clock.end()
            self.steps += 1
            if self.steps == ITERS:
                baton.finish()
            else:
                baton.give()
                baton.take()
                clock.begin()

    policy = AutoModelForCausalLM.from_pretrained(os.path.join(WORK, "policy"))
    out_dir = os.path.join(WORK, f"trl_{ALGO}_{os.getpid()}")
    # No gradient checkpointing (GRPOConfig turns it on by default; rlhf_ds leaves it off).
    common = dict(output_dir=out_dir, report_to=[], save_strategy="no", logging_steps=1, seed=0, gradient_checkpointing=False,
                  disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                  bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())    # rlhf_ds's dtype=auto
    if ALGO == "ppo":
        from trl.experimental.ppo import PPOConfig, PPOTrainer
        from trl.experimental.ppo import ppo_trainer as mod

        real_generation, real_forward = mod.batch_generation, mod.forward

        def batch_generation(model, queries, *a, **k):
            out = real_generation(model, queries, *a, **k)
            clock.gen_end = time.perf_counter()
            # Response tokens up to and including the first EOS (what rlhf_ds's action_mask counts).
            resp = out[0][:, queries.shape[1]:]
            is_eos = resp == tok.eos_token_id
            first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(is_eos[:, 0], resp.shape[1], dtype=torch.long))
            lengths.append(float(first.float().mean()))
            return out

        def forward(model, *a, **k):
            if clock.train_start is None and hasattr(model, "value_model"):
                clock.train_start = time.perf_counter()
            return real_forward(model, *a, **k)

        mod.batch_generation, mod.forward = batch_generation, forward
        args = PPOConfig(**common, per_device_train_batch_size=PROMPTS, gradient_accumulation_steps=1,
                         num_mini_batches=1, num_ppo_epochs=1, local_rollout_forward_batch_size=PROMPTS,
                         response_length=NEW_TOKENS, total_episodes=PROMPTS * ITERS, stop_token="eos",
                         kl_coef=0.05, kl_estimator="k1", learning_rate=3e-6, num_sample_generations=0,
                         lr_scheduler_type="constant",
                         missing_eos_penalty=None)
        data = Dataset.from_dict({"input_ids": ids})
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy,
                             ref_model=AutoModelForCausalLM.from_pretrained(os.path.join(WORK, "policy")),
                             reward_model=AutoModelForSequenceClassification.from_pretrained(os.path.join(WORK, "reward")),
                             value_model=AutoModelForSequenceClassification.from_pretrained(os.path.join(WORK, "reward")),
                             train_dataset=data, eval_dataset=data.select(range(PROMPTS)), callbacks=[Boundaries()])
    else:
        from trl import GRPOConfig, GRPOTrainer

        real_gen, real_score = GRPOTrainer._generate, GRPOTrainer._generate_and_score_completions

        def _generate(self, *a, **k):
            t0 = time.perf_counter()
            out = real_gen(self, *a, **k)
            clock.gen_s += time.perf_counter() - t0
            return out

        def _generate_and_score_completions(self, *a, **k):
            t0, gen_before = time.perf_counter(), clock.gen_s
            out = real_score(self, *a, **k)
            clock.exp_s += time.perf_counter() - t0 - (clock.gen_s - gen_before)
            return out

        GRPOTrainer._generate, GRPOTrainer._generate_and_score_completions = _generate, _generate_and_score_completions
        completions = PROMPTS * GROUP
        args = GRPOConfig(**common, per_device_train_batch_size=completions, gradient_accumulation_steps=1,
                          num_generations=GROUP, max_completion_length=NEW_TOKENS, num_iterations=1,
                          max_steps=ITERS, beta=0.04, learning_rate=1e-6, temperature=1.0, top_p=1.0, top_k=0,
                          loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
                          shuffle_dataset=True, log_completions=False, lr_scheduler_type="constant")
        data = Dataset.from_dict({"prompt": texts})
        reward = AutoModelForSequenceClassification.from_pretrained(os.path.join(WORK, "reward"))
        trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok, reward_processing_classes=tok, callbacks=[Boundaries()])
    trainer.train()
    if ALGO == "grpo":
        lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    result = {"tool": "trl", "algo": ALGO, "precision": "bf16" if common["bf16"] else "fp32", "device": "cuda" if torch.cuda.is_available() else "cpu",
              "threads": torch.get_num_threads(), "iteration_s": [r["iteration_s"] for r in clock.rows],
              "phases": [{k: v for k, v in r.items() if k != "iteration_s"} for r in clock.rows],
              "response_length": lengths or None, "episodes_per_iteration": PROMPTS * (GROUP if ALGO == "grpo" else 1)}
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
