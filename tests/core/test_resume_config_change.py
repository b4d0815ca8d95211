"""Resuming with a changed configuration: each key is refused (one line naming it and both values) or
applied and logged, and config.json says what was actually used. Refused: anything that changes what is
trained (learning rates, step counts, batch sizes, schedules, data); applied: when to log, evaluate or
save, and how fast the same numbers are computed (config.RESUME_ALLOWED)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from rlhf_ds.config import ConfigError, load_config, resume_changes
from rlhf_ds.engine import CheckpointManager, build_train_engine, init_distributed
from rlhf_ds.logging import MetricsLogger, get_logger
from rlhf_ds.pipeline import create_rlhf_pipeline
from rlhf_ds.trainers.common import RunContext, ShardedSampler, resume_state

from ..conftest import TINY, clean_env, read_jsonl, strip_times

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- the policy, per key

def test_policy_refuses_what_changes_training_and_applies_the_rest():
    saved = load_config(None, []).to_dict()
    now = load_config(None, ["--sft.learning_rate=0.5", "--sft.max_steps=9", "--sft.eval_interval=3",
                             "--logging.log_interval=5", "--save_interval=2", "--ppo.iterations=7",
                             "--ppo.eval_interval=1", "--model.reward_model_path=rm", "--resume=true"]).to_dict()
    sft = {c.key: c.allowed for c in resume_changes("sft", saved, now)}
    assert sft == {"sft.learning_rate": False, "sft.max_steps": False, "sft.eval_interval": True,
                   "logging.log_interval": True, "save_interval": True}    # PPO's keys are not SFT's business
    ppo = {c.key: c.allowed for c in resume_changes("ppo", saved, now)}
    assert ppo == {"ppo.iterations": False, "ppo.eval_interval": True, "model.reward_model_path": False,
                   "logging.log_interval": True, "save_interval": True}
    change = next(c for c in resume_changes("ppo", saved, now) if c.key == "ppo.iterations")
    assert (change.saved, change.now) == (saved["ppo"]["iterations"], 7)


# ----------------------------------------------------------------------------- PPO's section, through resume_state

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)


@pytest.fixture(scope="module")
def engine():
    init_distributed("cpu")
    return build_train_engine("tiny", Tiny, {"zero_optimization": {"stage": 0}}, micro_batch_size=2, grad_accum=1,
                              precision="fp32", gradient_clipping=1.0, lr=0.1, weight_decay=0.0, total_steps=10,
                              warmup_steps=0, schedule="constant")


def _ctx(save_dir, *overrides):
    """What the pipeline gives a trainer, config.json written first as the pipeline does."""
    cfg = load_config(None, [f"--save_dir={save_dir}", *overrides])
    os.makedirs(save_dir, exist_ok=True)
    cfg.save(os.path.join(save_dir, "config.json"))
    return RunContext(cfg=cfg, dist=init_distributed("cpu"), ds_config={}, precision="fp32", log=get_logger(),
                      metrics=MetricsLogger(os.path.join(save_dir, "logs"), tensorboard=False))


def _ppo_resume(ctx, engine):
    ckpt = CheckpointManager(os.path.join(ctx.cfg.save_dir, "checkpoints", "ppo"))
    sampler = ShardedSampler(8, 4, 0, 1, seed=0)
    return ckpt, sampler, resume_state(ctx, ckpt, {"tiny": engine}, "ppo", sampler, position_key="iteration")


def test_ppo_resume_refuses_a_changed_section_key_and_applies_an_allowed_one(engine, tmp_path, capsys):
    save_dir = str(tmp_path)
    ckpt, sampler, state = _ppo_resume(_ctx(save_dir, "--ppo.iterations=4", "--ppo.policy_lr=0.01"), engine)
    assert state is None
    sampler.next_indices()
    ckpt.save("iter1", {"tiny": engine}, {"iteration": 1, "sampler": sampler.state_dict()})

    ctx = _ctx(save_dir, "--ppo.iterations=8", "--ppo.policy_lr=0.1", "--resume=true")
    with pytest.raises(ConfigError) as err:
        _ppo_resume(ctx, engine)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot resume ppo from ")
    assert "ppo.iterations was 4 there, 8 now" in msg and "ppo.policy_lr was 0.01 there, 0.1 now" in msg
    assert _config(save_dir)["ppo"]["iterations"] == 4 and _config(save_dir)["ppo"]["policy_lr"] == 0.01

    ctx = _ctx(save_dir, "--ppo.iterations=4", "--ppo.policy_lr=0.01", "--ppo.eval_interval=3", "--resume=true")
    _, _, state = _ppo_resume(ctx, engine)
    assert state["iteration"] == 1
    assert "ppo: resuming with ppo.eval_interval changed from 10 to 3 (applied)" in capsys.readouterr().out
    assert _config(save_dir)["ppo"]["eval_interval"] == 3


# ----------------------------------------------------------------------------- SFT, end to end

SFT = [*TINY, "--sft.max_steps=4", "--sft.eval_interval=2", "--save_interval=2", "--sft.learning_rate=0.01"]


class Interrupted(Exception):
    pass


def _run_sft(save_dir, *extra, stop_after=None):
    pipe = create_rlhf_pipeline(None, [*SFT, f"--save_dir={save_dir}", *extra])
    if stop_after is not None:   # a run killed right after logging step `stop_after`
        log = pipe.metrics.log

        def log_then_stop(stage, step, metrics):
            log(stage, step, metrics)
            if step == stop_after:
                raise Interrupted
        pipe.metrics.log = log_then_stop
    try:
        return pipe.run_sft()
    except Interrupted:
        return None


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, demo_task):
    """An SFT run straight through, and the same run stopped after step 3 (checkpoint at step 2)."""
    runs = {}
    for name, stop in (("straight", None), ("interrupted", 3)):
        out = str(tmp_path_factory.mktemp(name) / "run")
        shutil.copytree(demo_task, os.path.join(out, "task"))
        _run_sft(out, stop_after=stop)
        runs[name] = out
    assert not os.path.exists(os.path.join(runs["interrupted"], "sft"))
    return runs


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_sft_resume_applies_allowed_changes_and_keeps_the_schedule(sft_runs, tmp_path, capsys):
    out = _copy(sft_runs["interrupted"], tmp_path / "run")
    _run_sft(out, "--resume=true", "--sft.eval_interval=1", "--logging.log_interval=2")
    log = capsys.readouterr().out
    assert "sft: resuming with sft.eval_interval changed from 2 to 1 (applied)" in log
    assert "sft: resuming with logging.log_interval changed from 1 to 2 (applied)" in log
    assert _config(out)["sft"]["eval_interval"] == 1 and _config(out)["logging"]["log_interval"] == 2
    rows = {r["step"]: r for r in strip_times(read_jsonl(os.path.join(out, "logs", "metrics.jsonl")))}
    straight = {r["step"]: r for r in strip_times(read_jsonl(os.path.join(sft_runs["straight"], "logs",
                                                                           "metrics.jsonl")))}
    assert "eval_loss" in rows[3] and "eval_loss" not in straight[3]    # evaluating every step: applied
    for step in (3, 4):                                                  # the schedule of the checkpoint
        assert rows[step]["lr"] == pytest.approx(straight[step]["lr"], rel=1e-12)
        assert rows[step]["loss"] == pytest.approx(straight[step]["loss"], rel=1e-5)


def test_sft_resume_with_a_changed_learning_rate_is_one_line_and_exit_2(sft_runs, tmp_path):
    out = _copy(sft_runs["interrupted"], tmp_path / "run")
    proc = subprocess.run([sys.executable, "launch/train_sft.py", *SFT, f"--save_dir={out}", "--resume",
                           "--sft.learning_rate=0.1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=clean_env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("train_sft.py: "))
    assert "cannot resume sft from" in line and "sft.learning_rate was 0.01 there, 0.1 now" in line
    assert _config(out)["sft"]["learning_rate"] == 0.01        # what the checkpoint was trained with


def test_finished_sft_refuses_more_steps(sft_runs, tmp_path):
    out = _copy(sft_runs["straight"], tmp_path / "run")
    with pytest.raises(ConfigError, match="sft.max_steps was 4 there, 8 now"):
        _run_sft(out, "--resume=true", "--sft.max_steps=8")
    assert _config(out)["sft"]["max_steps"] == 4
    assert os.path.isfile(os.path.join(out, "sft", "model.safetensors"))


def test_a_changed_task_is_compared_on_resume():
    """An RL checkpoint of the arithmetic task must not be continued as the describe task."""
    from rlhf_ds.config import load_config, resume_changes

    saved = load_config(None, ["--task=arithmetic"]).to_dict()
    now = load_config(None, ["--task=describe"]).to_dict()
    changes = resume_changes("ppo", saved, now)
    assert [(c.key, c.allowed) for c in changes] == [("task", False)]
