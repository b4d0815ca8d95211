"""prepare_demo: everything on disk in one call, reused when already built."""
import json
import os
import shutil

import pytest

from rlhf_ds.tasks import GOLD_REWARD_MAX, prepare_demo, read_jsonl

SIZES = dict(sft=120, preference=60, preference_eval=40, ranking=10, prompts=30, eval_prompts=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "task")
    return out, prepare_demo(out, seed=0, ranking_k=3, **SIZES)


def test_everything_is_there(built):
    out, paths = built
    expected = {f"data_{n}" for n in SIZES} | {"tokenizer", "base_model", "task"}
    assert set(paths) == expected
    assert all(os.path.exists(p) and p.startswith(out) for p in paths.values())
    assert len(read_jsonl(paths["data_sft"])) == 120
    assert all(len(r["responses"]) == 3 for r in read_jsonl(paths["data_ranking"]))
    with open(paths["task"]) as f:
        info = json.load(f)
    assert info["gold_reward_max"] == GOLD_REWARD_MAX
    assert 0.3 < info["sft_data_mean_gold_reward"] < 0.7
    assert 0.8 < info["gold_accuracy_on_preference_eval"] < 1.0
    assert info["parameters"] < 10_000_000


def test_reused_when_built_with_the_same_arguments(built):
    out, paths = built
    stamp = os.path.getmtime(paths["task"])
    assert prepare_demo(out, seed=0, ranking_k=3, **SIZES) == paths
    assert os.path.getmtime(paths["task"]) == stamp


def test_a_copied_directory_is_reused_in_place(built, tmp_path):
    out, paths = built
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    stamp = os.path.getmtime(os.path.join(copy, "task.json"))
    moved = prepare_demo(copy, seed=0, ranking_k=3, **SIZES)
    assert all(p.startswith(copy) for p in moved.values())
    assert os.path.getmtime(moved["task"]) == stamp   # not rebuilt


def test_rebuilt_when_the_arguments_change(built, tmp_path):
    out, _ = built
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    paths = prepare_demo(copy, seed=1, ranking_k=3, **SIZES)
    with open(paths["task"]) as f:
        assert json.load(f)["built_with"]["seed"] == 1
