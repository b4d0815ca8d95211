"""The whole recipe on 2 ranks (ZeRO-3 over gloo) through the deepspeed launcher, then exact resume."""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from .conftest import TINY, clean_env, read_jsonl, strip_times
from .launcher import REPO, deepspeed_cmd, run_deepspeed

pytestmark = pytest.mark.multirank
PPO = os.path.join(REPO, "launch", "train_ppo.py")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, demo_task):
    """SFT, reward model and 3 PPO iterations on 2 ranks; the outputs are shared by the tests below."""
    import shutil
    out = str(tmp_path_factory.mktemp("pipeline") / "run")
    shutil.copytree(demo_task, os.path.join(out, "task"))
    proc = run_deepspeed(PPO, ["--deepspeed", "configs/zero3.json", "--save_dir", out, *TINY], ranks=2, timeout=900)
    return out, proc.stdout + proc.stderr


def test_outputs_follow_the_design(pipeline_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out, log = pipeline_run
    assert "2 rank(s), gloo on cpu" in log and "ZeRO-3" in log
    for name in ("config.json", "logs/metrics.jsonl", "logs/summary.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    stages = {r["stage"] for r in read_jsonl(os.path.join(out, "logs", "metrics.jsonl"))}
    assert stages == {"sft", "reward", "ppo"}
    summary = json.load(open(os.path.join(out, "logs", "summary.json")))
    for key in ("rm_eval_accuracy", "gold_reward_sft", "gold_reward_ppo", "gold_reward_max", "kl_final",
                "ppo_tokens_per_s", "wall_time_s", "peak_memory_gib"):
        assert isinstance(summary[key], (int, float)), key
    assert summary["world_size"] == 2 and 0.1 < summary["peak_memory_gib"] < 24
    # Exported models load with plain transformers.
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "ppo"))
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(out, "ppo"))
    assert policy.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "sft"))
    AutoModelForCausalLM.from_pretrained(os.path.join(out, "sft", "last"))
    rm = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "reward_model"))
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id


def test_exported_reward_model_scores_last_real_token(pipeline_run):
    """HF's own pooling of our export agrees with ours on right- and left-padded batches, and a reward
    is never read at a pad position (pad != eos, pad id set)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_ds.models.scalar_head import ScalarHeadModel

    out, _ = pipeline_run
    path = os.path.join(out, "reward_model")
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ours = ScalarHeadModel(hf).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": "describe the cat"},
                                      {"role": "assistant", "content": r}], tokenize=False)
             for r in ("the cat is warm .", "the cat is very very happy and kind and good .")]
    with torch.no_grad():
        alone = [float(ours(**{k: v for k, v in tok(t, return_tensors="pt", add_special_tokens=False).items()
                               if k in ("input_ids", "attention_mask")})["scores"]) for t in texts]
    for side in ("right", "left"):
        tok.padding_side = side
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            mine = ours(enc.input_ids, enc.attention_mask)["scores"]
            theirs = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                        position_ids=(enc.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits.squeeze(-1)
        assert torch.allclose(mine, theirs, atol=1e-5), side
        assert torch.allclose(mine, torch.tensor(alone), atol=1e-4), side   # padding changes nothing


def _ppo_args(out, pipeline_out, extra):
    return ["--deepspeed", "configs/zero3.json", "--save_dir", out, *TINY,
            f"--model.sft_model_path={pipeline_out}/sft", f"--model.reward_model_path={pipeline_out}/reward_model",
            "--ppo.iterations=4", "--save_interval=2", *extra]


def _actor_weights(path):
    from safetensors.torch import load_file
    return load_file(os.path.join(path, "model.safetensors"))


def test_resume_after_a_crash_continues_exactly(pipeline_run, tmp_path):
    """4 PPO iterations straight through == 2 iterations, killed (SIGKILL), then resumed for 2 more."""
    src, _ = pipeline_run
    import shutil
    straight, crashed = str(tmp_path / "straight"), str(tmp_path / "crashed")
    for d in (straight, crashed):
        shutil.copytree(os.path.join(src, "task"), os.path.join(d, "task"))
    run_deepspeed(PPO, _ppo_args(straight, src, []), ranks=2, timeout=900)

    # Same run, killed without warning once the iteration-2 checkpoint is complete.
    proc = subprocess.Popen(deepspeed_cmd(PPO, _ppo_args(crashed, src, []), 2), cwd=REPO, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = os.path.join(crashed, "checkpoints", "ppo", "latest")
    deadline = time.time() + 600
    while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(latest), "the run never wrote its iteration-2 checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(crashed, "ppo", "model.safetensors")), "killed too late to test resume"

    log = run_deepspeed(PPO, _ppo_args(crashed, src, ["--resume"]), ranks=2, timeout=900)
    assert "ppo: resumed at iteration 2" in log.stdout

    a, b = _actor_weights(os.path.join(straight, "ppo")), _actor_weights(os.path.join(crashed, "ppo"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    ma = strip_times(r for r in read_jsonl(os.path.join(straight, "logs", "metrics.jsonl")) if r["stage"] == "ppo")
    mb = strip_times(r for r in read_jsonl(os.path.join(crashed, "logs", "metrics.jsonl")) if r["stage"] == "ppo")
    assert [r["step"] for r in mb] == [r["step"] for r in ma]
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (ra["step"], k)
            else:
                assert rb[k] == ra[k], (ra["step"], k)
