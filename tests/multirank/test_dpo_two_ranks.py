"""DPO and KTO through launch/train_dpo.py on ranks started by the deepspeed launcher (ZeRO-3, gloo):
1 rank == 2 ranks with gradient accumulation, and exact resume after a SIGKILL."""
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from .conftest import TINY, clean_env, read_jsonl
from .launcher import REPO, deepspeed_cmd, run_deepspeed

pytestmark = pytest.mark.multirank
DPO = os.path.join(REPO, "launch", "train_dpo.py")


def _head(src, dst, n):
    with open(src) as f, open(dst, "w") as g:
        g.writelines(line for _, line in zip(range(n), f))
    return dst


def _dir(tmp_path, demo_task, name):
    d = str(tmp_path / name)
    shutil.copytree(demo_task, os.path.join(d, "task"))
    return d


def _args(d, *extra):
    data = os.path.join(d, "task", "data")
    return ["--deepspeed", "configs/zero3.json", "--save_dir", d, *TINY, f"--model.sft_model_path={d}/task/base_model",
            f"--dpo.eval_path={_head(os.path.join(data, 'preference_eval.jsonl'), os.path.join(d, 'pe.jsonl'), 16)}",
            f"--dpo.eval_prompt_path={_head(os.path.join(data, 'eval_prompts.jsonl'), os.path.join(d, 'ep.jsonl'), 4)}",
            "--dpo.batch_size=16", "--dpo.learning_rate=1e-3", *extra]


def _rows(d):
    drop = ("time",)
    return [{k: v for k, v in r.items() if k not in drop and not k.endswith("_per_s")}
            for r in read_jsonl(os.path.join(d, "logs", "metrics.jsonl")) if r["stage"] == "dpo"]


def _weights(d):
    return load_file(os.path.join(d, "dpo", "model.safetensors"))


@pytest.mark.parametrize("loss,steps", [("sigmoid", 2), ("kto", 4)])
def test_one_rank_equals_two_ranks_with_accumulation(tmp_path, demo_task, loss, steps):
    """Global batches of 16: 1 rank x 1 micro-batch of 16 == 2 ranks x 2 micro-batches of 4. Both the DPO
    loss (global pair count) and KTO's reference point (over the whole global batch) must not depend on
    the split. KTO's reference point is 0 while the policy is the reference, so it runs until it is not."""
    dirs = {}
    for name, ranks, micro in (("one", 1, 16), ("two", 2, 4)):
        d = _dir(tmp_path, demo_task, name)
        run_deepspeed(DPO, _args(d, f"--dpo.max_steps={steps}", f"--dpo.micro_batch_size={micro}",
                                 f"--dpo.loss_type={loss}"), ranks=ranks, timeout=900)
        dirs[name] = d
    a, b = _weights(dirs["one"]), _weights(dirs["two"])
    base = load_file(os.path.join(demo_task, "base_model", "model.safetensors"))
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-4, "training did not move the weights"
    for k in a:
        update = (a[k] - base[k]).norm()
        if update > 0:
            assert float((a[k] - b[k]).norm() / update) < 5e-3, k
    ra, rb = _rows(dirs["one"]), _rows(dirs["two"])
    train_a, train_b = [r for r in ra if "loss" in r], [r for r in rb if "loss" in r]
    assert len(train_a) == len(train_b) == steps
    if loss == "kto":
        assert train_a[-1]["kl"] > 0, "the reference point never left 0; the test would not see it"
    for step, (x, y) in enumerate(zip(train_a, train_b)):
        for key in ("loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-5 if step == 0 else 1e-4), (step, key)


def test_resume_after_a_sigkill_continues_exactly(tmp_path, demo_task):
    """6 DPO steps straight through == killed (SIGKILL) once the step-2 checkpoint exists, then resumed."""
    extra = ["--dpo.max_steps=6", "--save_interval=2", "--dpo.eval_interval=3"]
    straight, crashed = _dir(tmp_path, demo_task, "straight"), _dir(tmp_path, demo_task, "crashed")
    run_deepspeed(DPO, _args(straight, *extra), ranks=2, timeout=900)

    proc = subprocess.Popen(deepspeed_cmd(DPO, _args(crashed, *extra), 2), cwd=REPO, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = os.path.join(crashed, "checkpoints", "dpo", "latest")
    deadline = time.time() + 600
    while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert os.path.exists(latest), "the run never wrote its step-2 checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(crashed, "dpo", "model.safetensors")), "killed too late to test resume"

    log = run_deepspeed(DPO, _args(crashed, *extra, "--resume"), ranks=2, timeout=900)
    assert "dpo: resumed at step" in log.stdout
    a, b = _weights(straight), _weights(crashed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    ra, rb = _rows(straight), _rows(crashed)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), (x["step"], k)
