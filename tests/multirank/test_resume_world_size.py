"""A checkpoint written by 2 ranks resumes on 1, and one written by 1 resumes on 2 (DeepSpeed's
universal checkpoint format, engine/universal.py), for every stage that checkpoints.

Each case runs a stage straight through on one world size with a checkpoint half-way (the run keeps
it), then copies the run, removes what the stage's end wrote (its outputs and finished.json), and
resumes from the half-way checkpoint on the other world size. The resumed run must end with the
weights of the straight one: the same records per step (the data position is counted in global
batches), the same Adam moments, step and learning rate. What differs is the summation order of the
gradient over ranks and micro-batches, ~1e-6 of an update here (SFT 2 -> 1: 1.5e-6); the bound is
1e-3. Resuming without the optimizer state (Adam moments reset) ends 0.59 of an update away (SFT 2 -> 1,
measured by loading the universal checkpoint with load_optimizer_states=False).

PPO is compared with greedy generation: sampled completions draw from per-rank random streams, which
cannot be the same streams on another number of ranks (see docs/many_nodes.md).
"""
import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from .conftest import TINY, read_jsonl
from .launcher import REPO, run_deepspeed

pytestmark = pytest.mark.multirank
RULE = '''
def score(prompts, completions, **columns):
    return [float(len(c) % 3 == 0) + 0.1 * len(c.split()) for c in completions]
'''


def _stage_args(stage, demo_task, shared):
    """The stage's script, output folder and arguments; every path it names lies outside the run folder
    (a resume refuses a changed model or reward path, and the resumed run is a copy in another folder)."""
    base = os.path.join(demo_task, "base_model")
    data = os.path.join(demo_task, "data")
    if stage == "sft":
        return "train_sft.py", "sft", ["--sft.max_steps=4", "--sft.eval_interval=100"]
    if stage == "reward":
        return "train_rm.py", "reward_model", ["--reward.max_steps=4", "--reward.eval_interval=100",
                                               f"--model.sft_model_path={base}",
                                               f"--reward.eval_path={os.path.join(data, 'preference_eval.jsonl')}"]
    if stage == "dpo":
        return "train_dpo.py", "dpo", [f"--model.sft_model_path={base}", "--dpo.max_steps=4", "--dpo.batch_size=16",
                                       "--dpo.eval_interval=100", "--dpo.learning_rate=1e-3",
                                       f"--dpo.eval_path={_head(data, 'preference_eval.jsonl', shared, 16)}",
                                       f"--dpo.eval_prompt_path={_head(data, 'eval_prompts.jsonl', shared, 4)}"]
    rule = os.path.join(shared, "rule.py")
    with open(rule, "w") as f:
        f.write(RULE)
    return "train_ppo.py", "ppo", [f"--model.sft_model_path={base}", "--model.critic_init=sft",
                                   f"--rewards.sources=[{{type: function, function: '{rule}:score'}}]",
                                   "--ppo.iterations=4", "--ppo.rollout_batch_size=8", "--ppo.minibatch_size=8",
                                   "--data.demo_eval_prompts=4", "--generation.do_sample=false"]


def _head(data, name, d, n):
    dst = os.path.join(d, "head_" + name)
    with open(os.path.join(data, name)) as f, open(dst, "w") as g:
        g.writelines(line for _, line in zip(range(n), f))
    return dst


def _run(stage, d, ranks, demo_task, resume=False, more=(), config="zero3"):
    script, out, extra = _stage_args(stage, demo_task, os.path.dirname(d))
    args = ["--deepspeed", f"configs/{config}.json", "--save_dir", d, *TINY, "--save_interval=2", *extra, *more]
    proc = run_deepspeed(os.path.join(REPO, "launch", script), args + (["--resume"] if resume else []),
                         ranks=ranks, timeout=600)
    return os.path.join(d, out), proc.stdout + proc.stderr


def _copy_before_the_end(src, dst, stage, out):
    """`src`'s run as it was right after its half-way checkpoint: outputs and the finished record gone.
    The copied task.json still names `src`'s data files, as the checkpoint's configuration does (a
    resume refuses changed data paths); they stay in place."""
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, out))
    ckpt = os.path.join(dst, "checkpoints", stage)
    os.remove(os.path.join(ckpt, "finished.json"))
    for name in os.listdir(ckpt):
        assert name in ("latest", "step2", "iter2"), f"{name}: only the half-way checkpoint should be kept"


# In the default run: SFT from 2 ranks to 1 (a requeued job landing on fewer nodes), 40-80 s here.
# ZeRO-3 throughout, and SFT under ZeRO-2 (whose checkpoints the converter reads another way).
CASES = [("sft", 2, 1, "zero3")] + [pytest.param(stage, before, after, "zero3", marks=pytest.mark.slow)
                                    for stage in ("sft", "reward", "dpo", "ppo") for before, after in ((2, 1), (1, 2))
                                    if (stage, before) != ("sft", 2)] + [
    pytest.param("sft", 2, 1, "zero2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("stage, before, after, config", CASES)
def test_resume_on_another_world_size_continues_exactly(tmp_path, demo_task, stage, before, after, config):
    straight = str(tmp_path / "straight")
    shutil.copytree(demo_task, os.path.join(straight, "task"))
    out_straight, _ = _run(stage, straight, before, demo_task, config=config)
    out = os.path.basename(out_straight)
    resumed = str(tmp_path / "resumed")
    _copy_before_the_end(straight, resumed, stage, out)
    ckpt = os.path.join(resumed, "checkpoints", stage)
    tag = open(os.path.join(ckpt, "latest")).read().strip()
    state = json.load(open(os.path.join(ckpt, tag, "trainer_state.json")))
    assert state["world_size"] == before

    out_resumed, log = _run(stage, resumed, after, demo_task, resume=True, config=config)
    position = "iteration" if stage == "ppo" else "step"
    assert f"{stage}: resumed at {position} 2" in log
    assert f"written by {before} rank(s), this run has {after}" in log

    a, b = load_file(os.path.join(out_straight, "model.safetensors")), load_file(os.path.join(out_resumed,
                                                                                             "model.safetensors"))
    base = load_file(os.path.join(demo_task, "base_model", "model.safetensors"))
    assert a.keys() == b.keys()
    shared = [k for k in a if k in base]
    assert len(shared) > len(a) // 2
    moved = max(float((a[k] - base[k]).abs().max()) for k in shared)
    assert moved > 1e-3, "training did not change the weights; the comparison would be empty"
    for k in shared:
        update = float((a[k] - base[k]).norm())
        if update > 0:
            assert float((a[k] - b[k]).norm()) / update < 1e-3, k
    # The steps after the checkpoint are logged once, by the resumed run, with the straight run's figures.
    figure = "reward_mean" if stage == "ppo" else "loss"
    logs = [[r for r in read_jsonl(os.path.join(d, "logs", "metrics.jsonl")) if r["stage"] == stage and figure in r]
            for d in (straight, resumed)]
    assert [r["step"] for r in logs[1]] == [r["step"] for r in logs[0]] == [1, 2, 3, 4]
    for ra, rb in zip(logs[0][2:], logs[1][2:]):
        assert ra[figure] == pytest.approx(rb[figure], rel=1e-4, abs=1e-6), ra["step"]


@pytest.mark.slow
def test_a_zero3_ema_is_not_resumed_on_another_world_size(tmp_path, demo_task):
    """PPO's EMA keeps one ZeRO-3 shard per rank, which nothing re-cuts: the resume stops with one line
    (exit 2, no traceback) instead of loading shards that belong to other parameters."""
    straight = str(tmp_path / "straight")
    shutil.copytree(demo_task, os.path.join(straight, "task"))
    _run("ppo", straight, 2, demo_task, more=["--ppo.ema_beta=0.9"])
    resumed = str(tmp_path / "resumed")
    _copy_before_the_end(straight, resumed, "ppo", "ppo")
    shutil.rmtree(os.path.join(resumed, "ppo_ema"))
    with pytest.raises(AssertionError) as failed:
        _run("ppo", resumed, 1, demo_task, resume=True, more=["--ppo.ema_beta=0.9"])
    text = str(failed.value)
    assert "exited 2" in text and "per-rank ZeRO-3 shards of trainer state" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
