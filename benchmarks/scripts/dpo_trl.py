"""TRL's DPOTrainer (1.12) on the demo's preference pairs, one process: the baseline of
benchmarks/test_dpo_throughput.py. Run as a user of TRL would: the pairs in chat form
(conversational prompt / chosen / rejected), TRL's own tokenisation, its default reference (a frozen
copy of the model), one epoch.

    python dpo_trl.py MODEL_DIR PAIRS.jsonl OUT.json [--pairs N] [--batch 32] [--lr 5e-4] [--beta 0.1]
                      [--max-length 64]

Writes {"pairs", "train_s", "pairs_per_s", "train_cpu_s", "pairs_per_cpu_s", "setup_s", ...}: train_s is
trainer.train()'s wall time (TRL's own train_samples_per_second is the same ratio), train_cpu_s the
process's CPU time over it (all threads), setup_s the trainer's construction (tokenisation included).
"""
import argparse
import json
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("pairs")
    p.add_argument("out")
    p.add_argument("--pairs", dest="n", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.pairs) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[:a.n] if a.n else rows
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    args = DPOConfig(output_dir=os.path.join(os.path.dirname(os.path.abspath(a.out)), "trl_dpo_out"),
                     per_device_train_batch_size=a.batch, learning_rate=a.lr, lr_scheduler_type="cosine",
                     beta=a.beta, max_length=a.max_length, num_train_epochs=1, use_cpu=True, report_to=[],
                     save_strategy="no", logging_steps=50, seed=0, disable_tqdm=True)
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    setup_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    out = trainer.train()
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    result = {"pairs": len(rows), "train_s": train_s, "pairs_per_s": len(rows) / train_s, "setup_s": setup_s,
              "train_cpu_s": cpu_s, "pairs_per_cpu_s": len(rows) / cpu_s,
              "trl_train_samples_per_second": out.metrics.get("train_samples_per_second"),
              "final_loss": out.metrics.get("train_loss")}
    with open(a.out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
