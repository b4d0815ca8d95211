"""The DPO/KTO stage on one rank in this process: the reference computed three ways gives the same numbers
(the precomputed log-probs against an independent plain-transformers forward and the live engine), its
store is keyed by data and model, and the stage's summary, metrics and export."""
import json
import os
import shutil

import pytest
import torch

from rlhf_ds.data import load_records
from rlhf_ds.pipeline import create_rlhf_pipeline
from rlhf_ds.trainers.preference_data import ResponsesDataset, ranking_pairs
from rlhf_ds.trainers.reference import LiveReference, precompute_reference, reference_engine

from ..conftest import TINY, read_jsonl


def _head(src, dst, n):
    with open(src) as f, open(dst, "w") as g:
        g.writelines(line for _, line in zip(range(n), f))
    return dst


def _args(save_dir, *extra):
    task = os.path.join(save_dir, "task")
    eval_pairs = _head(os.path.join(task, "data", "preference_eval.jsonl"), os.path.join(save_dir, "pe.jsonl"), 24)
    return [*TINY, f"--save_dir={save_dir}", f"--model.sft_model_path={task}/base_model",
            f"--dpo.eval_path={eval_pairs}", "--data.demo_eval_prompts=8", "--dpo.max_steps=3", "--dpo.batch_size=8", *extra]


def _hf_logps(model, example, k):
    """Summed log-probs of response k of a tokenized pair, by a plain forward of prompt + response."""
    ids = torch.tensor([example.prompt_ids + example.responses[k]])
    mask = torch.tensor([0] * len(example.prompt_ids) + example.response_masks[k])[1:].bool()
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    return float(logp.gather(-1, ids[0, 1:, None])[:, 0][mask].sum())


def test_precomputed_reference_equals_the_live_one_and_is_keyed_by_data_and_model(save_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    pipe = create_rlhf_pipeline(None, _args(save_dir))
    ctx = pipe._context()
    base = os.path.join(save_dir, "task", "base_model")
    recs = load_records(os.path.join(save_dir, "task", "data", "preference.jsonl"), kind="ranking").records[:13]
    ds = ResponsesDataset(ranking_pairs(recs), ctx.tokenizer, 64, 24, k=2)
    stored = precompute_reference(ctx, base, {"train": ds}, micro=4, width=2)["train"]
    assert stored.shape == (13, 2) and bool((stored < 0).all())

    hf = AutoModelForCausalLM.from_pretrained(base).eval()
    want = torch.tensor([[_hf_logps(hf, ds[i][1], k) for k in (0, 1)] for i in range(len(ds))], dtype=torch.float64)
    torch.testing.assert_close(stored, want, rtol=1e-5, atol=1e-4)
    live = LiveReference(reference_engine(ctx, base, 8))
    batch = ds.collate([ds[i] for i in (3, 0, 7, 12)])            # another batch composition and padding
    got = live.logps(None, *batch.flat()).view(4, 2).double()
    live.destroy()
    torch.testing.assert_close(got, stored[[3, 0, 7, 12]], rtol=1e-5, atol=1e-4)

    def must_not_build():
        raise AssertionError("the stored log-probs should have been read")

    again = precompute_reference(ctx, base, {"train": ds}, micro=4, width=2, build=must_not_build)["train"]
    assert torch.equal(again, stored)
    built = []

    def counted(path):
        built.append(path)
        return reference_engine(ctx, path, 4)

    fewer = ResponsesDataset(ranking_pairs(recs[:12]), ctx.tokenizer, 64, 24, k=2)     # a changed file
    precompute_reference(ctx, base, {"train": fewer}, micro=4, width=2, build=lambda: counted(base))
    assert built == [base]
    other = str(tmp_path / "other_model")                        # a changed model: one weight differs
    shutil.copytree(base, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    model.save_pretrained(other)
    changed = precompute_reference(ctx, other, {"train": ds}, micro=4, width=2, build=lambda: counted(other))["train"]
    assert built == [base, other] and not torch.equal(changed, stored)
    assert len(os.listdir(os.path.join(save_dir, "checkpoints", "dpo_reference"))) == 3


def _run(save_dir, *extra):
    summary = create_rlhf_pipeline(None, _args(save_dir, *extra)).run_dpo_pipeline()
    rows = [r for r in read_jsonl(os.path.join(save_dir, "logs", "metrics.jsonl")) if r["stage"] == "dpo"]
    return summary, rows


def _same_rows(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        keys = [k for k in ra if k != "time" and not k.endswith("_per_s")]
        assert keys == [k for k in rb if k != "time" and not k.endswith("_per_s")]
        for k in keys:
            if k == "reward_accuracy" and ra["step"] == 1:
                continue    # policy == reference: every reward is 0 +- rounding, and a tie counts as wrong
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-5), (ra["step"], k)


def test_dpo_summary_metrics_and_export_with_a_live_or_precomputed_reference(save_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    summary, rows = _run(save_dir)
    for key in ("gold_reward_sft", "gold_reward_final", "gold_gap_closed", "kl_final", "wall_time_s",
                "dpo_eval_accuracy", "peak_memory_gib"):
        assert isinstance(summary[key], float), key
    assert summary["algorithm"] == "dpo" and summary["kl_final"] > 0
    assert json.load(open(os.path.join(save_dir, "logs", "summary.json")))["algorithm"] == "dpo"
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for key in ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "logps_chosen",
                "logps_rejected", "pairs_per_s"):
        assert key in train[0], key
    assert train[0]["loss"] == pytest.approx(0.6931472, rel=1e-5)     # policy == reference: -log sigmoid(0)
    assert "eval_accuracy" in train[-1] and rows[0]["step"] == 0 and "eval_gold_reward" in rows[0]
    assert "final_eval_kl" in rows[-1]
    AutoModelForCausalLM.from_pretrained(os.path.join(save_dir, "dpo"))

    other = str(tmp_path / "precomputed")
    shutil.copytree(os.path.join(save_dir, "task"), os.path.join(other, "task"))
    summary2, rows2 = _run(other, "--dpo.precompute_reference=true")
    assert os.listdir(os.path.join(other, "checkpoints", "dpo_reference"))
    _same_rows(rows, rows2)
    assert summary2["kl_final"] == pytest.approx(summary["kl_final"], rel=1e-4)


@pytest.mark.parametrize("extra,algorithm,keys", [
    (["--dpo.loss_type=kto"], "kto", ("kl", "rewards_desirable", "rewards_undesirable", "desirable_share")),
    (["--dpo.loss_type=simpo", "--dpo.rpo_alpha=0.5"], "simpo", ("reward_margin", "nll")),
])
def test_kto_and_simpo_train(save_dir, extra, algorithm, keys):
    summary, rows = _run(save_dir, *extra)
    assert summary["algorithm"] == algorithm and isinstance(summary["dpo_eval_accuracy"], float)
    train = [r for r in rows if "loss" in r]
    assert len(train) == 3 and all(k in train[-1] for k in keys)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
