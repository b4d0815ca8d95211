"""The RL loop's held-out prompts named by a dataset are read at its test split, not at the split it
trains on (the eval-split rule of trainers/data_prep.py, reaching load_rl_data)."""
import logging
import os
import types

from rlhf_ds.config import load_config
from rlhf_ds.models.loading import load_tokenizer
from rlhf_ds.trainers.rl_loop import load_rl_data


def test_rl_eval_prompts_come_from_the_test_split(tmp_path, demo_task):
    import datasets

    data = str(tmp_path / "prompts")
    datasets.DatasetDict({split: datasets.Dataset.from_list([{"prompt": f"{split} question {i}"} for i in range(n)])
                          for split, n in (("train", 6), ("test", 3))}).save_to_disk(data)
    ctx = types.SimpleNamespace(cfg=load_config(None, []), log=logging.getLogger("test_rl_eval_split"),
                                tokenizer=load_tokenizer(os.path.join(demo_task, "base_model")),
                                dist=types.SimpleNamespace(world_size=1))
    got = load_rl_data(ctx, "grpo", data, data, None)
    assert sorted(r.messages[0].content.split(" ")[0] for r in got.records) == ["train"] * 6
    assert sorted(r.messages[0].content.split(" ")[0] for r in got.eval_records) == ["test"] * 3
