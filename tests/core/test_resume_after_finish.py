"""`--resume` after a finished SFT or reward stage leaves its outputs as they were (a SLURM requeue
re-launches the whole job with `--resume`).

Learning rate 0 makes every evaluation tie, so the best model stays the one evaluated at step 2,
exported before the step-2 checkpoint: the case where the resumed best-model bookkeeping points at a
`<out>.best` that the finished stage had already renamed to `<out>`.
"""
import contextlib
import hashlib
import json
import os
import shutil

import pytest

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY


def _tree(path):
    """Every file under `path`, relative name -> sha256 of its bytes."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _head(src, dst, n):
    with open(src) as f, open(dst, "w") as g:
        g.writelines(line for _, line in zip(range(n), f))
    return dst


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_task):
    """SFT, then the reward stage, each 4 steps with evaluations and checkpoints every 2."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    shutil.copytree(demo_task, os.path.join(out, "task"))
    rm_eval = _head(os.path.join(out, "task", "data", "preference_eval.jsonl"), os.path.join(out, "rm_eval.jsonl"), 16)
    args = [*TINY, f"--save_dir={out}", "--sft.max_steps=4", "--sft.eval_interval=2", "--reward.max_steps=4",
            "--reward.eval_interval=2", "--save_interval=2", "--sft.learning_rate=0", "--reward.learning_rate=0",
            f"--reward.eval_path={rm_eval}"]
    sft = create_rlhf_pipeline(None, args).run_sft()
    rm = create_rlhf_pipeline(None, [*args, f"--model.sft_model_path={out}/sft"]).run_reward_training()
    for stage in ("sft", "reward_model"):
        with open(os.path.join(out, stage, "rlhf_ds.json")) as f:
            assert json.load(f)["step"] == 2, "evaluations should tie, keeping the step-2 model"
    return out, args, {"sft": sft, "reward": rm}


def _metrics(out):
    with open(os.path.join(out, "logs", "metrics.jsonl")) as f:
        return f.read()


@pytest.mark.parametrize("stage,out_name,run", [("sft", "sft", "run_sft"),
                                                ("reward", "reward_model", "run_reward_training")])
def test_resume_after_finish_leaves_outputs_alone(finished, capsys, stage, out_name, run):
    out, args, results = finished
    before, metrics = _tree(os.path.join(out, out_name)), _metrics(out)
    assert "model.safetensors" in before and (stage != "sft" or "last/model.safetensors" in before)
    if stage == "reward":
        args = [*args, f"--model.sft_model_path={out}/sft"]
    result = getattr(create_rlhf_pipeline(None, [*args, "--resume=true"]), run)()
    assert _tree(os.path.join(out, out_name)) == before          # byte-identical, nothing added or lost
    assert not os.path.exists(os.path.join(out, out_name + ".best"))
    assert _metrics(out) == metrics                              # not trained again, so nothing re-logged
    assert result == results[stage]
    assert f"{stage}: finished earlier at step 4" in capsys.readouterr().out


def test_resume_from_checkpoint_after_publish_keeps_the_published_best(finished, tmp_path):
    """Killed after the best model was published but before the stage recorded that it had finished:
    the resume trains steps 3-4 again, finds no better model, and keeps the published one."""
    src, args, _ = finished
    out = str(tmp_path / "run")
    shutil.copytree(src, out)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, "checkpoints", "sft", "finished.json"))
    args = [a.replace(src, out) for a in args]
    before = _tree(os.path.join(out, "sft"))
    create_rlhf_pipeline(None, [*args, "--resume=true"]).run_sft()
    after = _tree(os.path.join(out, "sft"))
    assert after.keys() == before.keys()
    assert after["model.safetensors"] == before["model.safetensors"]
    with open(os.path.join(out, "sft", "last", "rlhf_ds.json")) as f:
        assert json.load(f)["step"] == 4
