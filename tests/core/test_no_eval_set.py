"""With no eval data (data.eval_fraction=0 and no eval path) SFT and the reward stage keep the LAST
model, say so, and report no metric of nothing (no eval_loss 0, perplexity 1, accuracy 0)."""
import json
import os

from rlhf_ds.pipeline import create_rlhf_pipeline

from ..conftest import TINY, read_jsonl


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_no_eval_data_keeps_the_last_model(save_dir, capsys):
    data = os.path.join(save_dir, "task", "data")
    # reward.data_path set, so the demo does not supply its held-out pairs as reward.eval_path.
    pipe = create_rlhf_pipeline(None, [*TINY, f"--save_dir={save_dir}", "--data.eval_fraction=0",
                                       "--sft.max_steps=4", "--sft.eval_interval=1", "--reward.max_steps=4",
                                       "--reward.eval_interval=1", f"--reward.data_path={data}/preference.jsonl"])
    pipe.run_sft()
    pipe.run_reward_training()
    summary = pipe.finish()
    log = capsys.readouterr().out

    for stage, name in (("sft", "sft"), ("reward", "reward_model")):
        with open(os.path.join(save_dir, name, "rlhf_ds.json")) as f:
            meta = json.load(f)
        assert meta["step"] == 4 and not any(k.startswith("eval_") for k in meta), meta
        assert f"{stage}: no eval data" in log
    assert _bytes(os.path.join(save_dir, "sft", "model.safetensors")) == \
        _bytes(os.path.join(save_dir, "sft", "last", "model.safetensors"))
    rows = read_jsonl(os.path.join(save_dir, "logs", "metrics.jsonl"))
    assert [r["step"] for r in rows if r["stage"] == "sft"] == [1, 2, 3, 4]
    assert not any(k.startswith("eval_") for r in rows for k in r), "a metric of an empty eval set"
    assert not any(k in summary for k in ("sft_eval_loss", "sft_eval_ppl", "rm_eval_accuracy")), summary
    assert summary["sft_steps"] == summary["rm_steps"] == 4
