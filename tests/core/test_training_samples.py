"""Samples during RL training: every `logging.sample_interval` iterations a few prompts with the
policy's completions and their rewards go to metrics.jsonl (as `<stage>/samples` lines) and to
TensorBoard as text; a resume drops the lines past its checkpoint like any other."""
import json
import os
import shutil

from rlhf_ds.logging import MetricsLogger
from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY


def test_rl_loop_logs_samples_with_their_rewards(tmp_path, demo_task):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = str(tmp_path / "run")
    shutil.copytree(demo_task, os.path.join(out, "task"))
    base = os.path.join(demo_task, "base_model")
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={out}", "--data.demo_eval_prompts=4", "--ppo.iterations=2",
                                       "--ppo.rollout_batch_size=4", "--ppo.n_samples=2", "--ppo.minibatch_size=8",
                                       f"--model.sft_model_path={base}", f"--model.reward_model_path={base}",
                                       "--logging.sample_interval=1", "--logging.num_samples=3", "--logging.tensorboard=true"],
                                recipe="grpo")
    pipe.run_rl_training()
    pipe.finish()
    rows = [json.loads(line) for line in open(os.path.join(out, "logs", "metrics.jsonl"))]
    samples = [r for r in rows if r["stage"] == "grpo/samples"]
    assert [r["step"] for r in samples] == [1, 2]
    figures = {r["step"]: r for r in rows if r["stage"] == "grpo" and "reward_mean" in r}
    asked = {json.loads(line)["prompt"] for line in open(os.path.join(out, "task", "data", "prompts.jsonl"))}
    for r in samples:
        assert len(r["samples"]) == 3
        for s in r["samples"]:
            assert s["prompt"] in asked                         # a training prompt, as the user wrote it
            assert isinstance(s["completion"], str)
            assert isinstance(s["reward"], float) and s["reward/model"] == s["reward"]   # one source, weight 1
    # The stage's own lines hold figures only.
    assert all("samples" not in r for r in figures.values())
    events = EventAccumulator(os.path.join(out, "logs", "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "grpo/samples/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("grpo/samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert samples[0]["samples"][0]["prompt"] in text


def test_resume_drops_samples_past_the_checkpoint(tmp_path):
    log = MetricsLogger(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3):
        log.log("grpo", step, {"reward_mean": float(step)})
        log.log_samples("grpo", step, [{"prompt": "p", "completion": f"c{step}", "reward": 0.5}])
    log.log("sft", 9, {"loss": 1.0})
    log.truncate_after("grpo", 2)
    kept = [(r["stage"], r["step"]) for r in log.read()]
    assert kept == [("grpo", 1), ("grpo/samples", 1), ("grpo", 2), ("grpo/samples", 2), ("sft", 9)]
