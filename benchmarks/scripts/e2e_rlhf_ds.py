"""rlhf_ds's side of the end-to-end RL benchmark (benchmarks/test_e2e_rl.py): the real RL stage
(`RLHFPipeline.run_rl_training`, i.e. trainers/rl_loop.py's `train_rl`) on the inputs of e2e_setup.py.

Usage (through the deepspeed launcher, one process):
    deepspeed --num_gpus 1 e2e_rlhf_ds.py WORK_DIR ALGO DS_CONFIG ITERATIONS PROMPTS NEW_TOKENS GROUP OUT_JSON [twice]
    ALGO: ppo | grpo (the grpo recipe of config_schema.RL_RECIPES, group size GROUP)

Timing, without touching the library: the loop's own phase timer (`ctx.timer`, whose `pop` each
iteration hands the phases generation, rewards, experience, training) is read by wrapping
`PhaseTimer.pop`; iteration boundaries come from wrapping the module-level `sample_groups` that
rl_loop calls first in each iteration, and `evaluate_policy`, which it calls once after the last one
(ppo.eval_interval=0). An iteration's wall time is from one `sample_groups` call to the next, so it also
counts the loop's bookkeeping (metrics, reductions, logging) that no phase covers. With the
RLHF_DS_E2E_BATON_* variables set, each iteration waits for its turn first (e2e_baton.py), untimed.
"""
import json
import os
import sys
import time

ARGS = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds --local_rank
WORK, ALGO, DS_CONFIG, ITERS, PROMPTS, NEW_TOKENS, GROUP, OUT = ARGS[:8]
# "twice": the actor's and critic's forward run twice, for step 4 and again in the update (the general
# path, as before rl_onestep.py), to measure what sharing it saves in the same benchmark run.
VARIANT = ARGS[8] if len(ARGS) > 8 else "shared"
ITERS, PROMPTS, NEW_TOKENS, GROUP = int(ITERS), int(PROMPTS), int(NEW_TOKENS), int(GROUP)


def overrides() -> list:
    # model.name_or_path set: not the demo (no demo task built, no gold reward scored per iteration).
    common = [f"--model.name_or_path={WORK}/policy", f"--model.sft_model_path={WORK}/policy", f"--model.reward_model_path={WORK}/reward",
              f"--model.tokenizer_path={WORK}/tokenizer", f"--deepspeed.config={DS_CONFIG}",
              f"--ppo.prompt_path={WORK}/prompts.jsonl", f"--ppo.eval_prompt_path={WORK}/eval_prompts.jsonl",
              f"--save_dir={WORK}/run_{ALGO}_{os.getpid()}", f"--ppo.iterations={ITERS}", "--ppo.eval_interval=0",
              f"--ppo.rollout_batch_size={PROMPTS}", "--ppo.ppo_epochs=1",
              f"--generation.max_new_tokens={NEW_TOKENS}", "--logging.tensorboard=false",
              "--logging.progress=false", "--logging.plots=false", "--logging.log_level=warning", "--seed=0"]
    if ALGO == "ppo":
        # TRL PPOConfig's values where the two differ in default: learning rate 3e-6 for both models,
        # KL k1 at 0.05 in the reward, GAE gamma 1, lambda 0.95, value clip 0.2.
        return common + ["--ppo.n_samples=1", f"--ppo.minibatch_size={PROMPTS}", f"--ppo.micro_batch_size={PROMPTS}",
                         "--ppo.policy_lr=3e-6", "--ppo.value_lr=3e-6", "--ppo.kl_coef=0.05", "--ppo.kl_estimator=k1"]
    completions = PROMPTS * GROUP
    return common + [f"--ppo.n_samples={GROUP}", f"--ppo.minibatch_size={completions}",
                     f"--ppo.micro_batch_size={completions}", "--ppo.policy_lr=1e-6"]


def main() -> None:
    import torch

    from rlhf_ds import logging as rl_logging
    from rlhf_ds.pipeline import create_rlhf_pipeline
    from rlhf_ds.trainers import rl_loop

    from e2e_baton import Baton

    baton = Baton()
    starts, ends, phases = [], [], []
    real_sample, real_eval, real_pop = rl_loop.sample_groups, rl_loop.evaluate_policy, rl_logging.PhaseTimer.pop

    def sample_groups(*a, **k):
        if starts:                        # the previous iteration ends here
            ends.append(time.perf_counter())
            baton.give()
        baton.take()
        starts.append(time.perf_counter())
        return real_sample(*a, **k)

    def evaluate_policy(*a, **k):
        if len(ends) < len(starts):       # the evaluation after the last iteration: that iteration ends
            ends.append(time.perf_counter())
            baton.finish()
        return real_eval(*a, **k)

    def pop(self):
        out = real_pop(self)
        phases.append(dict(out))
        return out

    rl_loop.sample_groups, rl_loop.evaluate_policy, rl_logging.PhaseTimer.pop = sample_groups, evaluate_policy, pop
    if VARIANT == "twice":
        rl_loop.shares_forward = lambda steps, accum: False
    pipe = create_rlhf_pipeline(None, overrides(), recipe="grpo" if ALGO == "grpo" else None)
    t0 = time.perf_counter()
    summary = pipe.run_rl_training()
    total = time.perf_counter() - t0
    walls = [e - s for s, e in zip(starts, ends)]
    metrics = [json.loads(line) for line in open(os.path.join(pipe.cfg.save_dir, "logs", "metrics.jsonl"))]
    lengths = [m["response_length"] for m in metrics if "response_length" in m]
    result = {"tool": "rlhf_ds", "variant": VARIANT, "algo": ALGO, "ds_config": os.path.basename(DS_CONFIG),
              "zero_stage": pipe.ds_config.get("zero_optimization", {}).get("stage", 0),
              "precision": pipe.precision, "device": pipe.dist.device.type, "threads": torch.get_num_threads(),
              "iteration_s": walls, "phases": phases[-len(walls):], "response_length": lengths[-len(walls):],
              "episodes_per_iteration": PROMPTS * (GROUP if ALGO == "grpo" else 1), "process_s": total,
              "summary_tokens_per_s": summary.get("tokens_per_s")}
    with open(OUT, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
