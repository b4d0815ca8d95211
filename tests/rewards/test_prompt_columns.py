"""Prompt files keep their extra columns through loading, for reward functions to read."""
import json

import pytest

from rlhf_ds.data import load_prompts
from rlhf_ds.rewards import columns_from_meta

ROWS = [{"prompt": "what is 2 + 3?", "answer": "5", "level": 1},
        {"prompt": "what is 7 - 4?", "answer": "3", "level": 2}]


def _write(path, fmt):
    import pandas as pd
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        pd.DataFrame(ROWS).to_csv(path, index=False)
    else:
        pd.DataFrame(ROWS).to_parquet(path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_extra_columns_become_reward_columns(tmp_path, fmt):
    path = tmp_path / f"prompts.{fmt}"
    _write(path, fmt)
    records = load_prompts(str(path)).records
    assert [r.messages[-1].content for r in records] == [r["prompt"] for r in ROWS]
    cols = columns_from_meta([r.meta for r in records], repeat=2)
    # CSV has no types: every cell comes back as the text it holds (rlhf_ds/data/readers.py).
    levels = ["1", "1", "2", "2"] if fmt == "csv" else [1, 1, 2, 2]
    assert cols == {"answer": ["5", "5", "3", "3"], "level": levels}
