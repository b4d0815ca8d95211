"""A stage's eval set named by a dataset: `name:split`, else its test split, else validation; never its
train split without saying so, and never the very split the model trains on by default."""
import json
import logging

import pytest

from rlhf_ds.config_schema import ConfigError
from rlhf_ds.trainers.data_prep import load_stage_records, parse_source, train_eval_records

LOG = logging.getLogger("test_eval_split")


def rows(split, n):
    return [{"prompt": f"{split} question {i}", "response": f"{split} answer {i}"} for i in range(n)]


def saved_dict(path, **sizes):
    """A DatasetDict.save_to_disk directory with splits of the given sizes."""
    import datasets
    datasets.DatasetDict({s: datasets.Dataset.from_list(rows(s, n)) for s, n in sizes.items()}).save_to_disk(str(path))
    return str(path)


def splits_of(records):
    """The split each record came from (its prompt starts with the split's name)."""
    return sorted({r.messages[0].content.split(" ")[0] for r in records})


def sft(data, eval_path):
    return train_eval_records(data, eval_path, "sft", None, False, 0.1, 0, LOG, "sft data")


def test_eval_set_named_by_a_dataset_takes_its_test_split(tmp_path, caplog):
    data = saved_dict(tmp_path / "ds", train=6, validation=3, test=2)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        train, held = sft(data, data)
    assert splits_of(train) == ["train"] and len(train) == 6
    assert splits_of(held) == ["test"] and len(held) == 2
    assert f"sft data eval: evaluating on split 'test' of {data} (its splits: train, validation, test)" in caplog.text


def test_then_its_validation_split(tmp_path):
    data = saved_dict(tmp_path / "ds", train=4, validation=3)
    _, held = sft(data, data)
    assert splits_of(held) == ["validation"]


def test_a_named_split(tmp_path, caplog):
    data = saved_dict(tmp_path / "ds", train=4, validation=3, test=2)
    _, held = sft(data, f"{data}:validation")
    assert splits_of(held) == ["validation"]
    train, _ = sft(f"{data}:test", f"{data}:validation")                 # training data may name one too
    assert splits_of(train) == ["test"]
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        _, held = sft(data, f"{data}:train")                              # asked for: allowed, and said
    assert splits_of(held) == ["train"]
    assert "evaluating on split 'train'" in caplog.text and "does not measure held-out data" in caplog.text
    with pytest.raises(ConfigError, match=r"sft data eval: .*ds has no split 'dev'; its splits: train, "
                                          r"validation, test$"):
        sft(data, f"{data}:dev")


def test_the_training_split_is_never_the_default_eval_set(tmp_path, caplog):
    only_train = saved_dict(tmp_path / "only_train", train=5)
    with pytest.raises(ConfigError, match=r"has only the 'train' split, which is the training data; .*"
                                          r"data.eval_fraction"):
        sft(only_train, only_train)
    # Another dataset's only split is held-out data by construction; still, a train split is said aloud.
    other = saved_dict(tmp_path / "other", train=2)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        _, held = sft(only_train, other)
    assert len(held) == 2 and "evaluating on split 'train'" in caplog.text
    several = saved_dict(tmp_path / "several", train=2, extra=2, more=2)
    with pytest.raises(ConfigError, match=r"has no test or validation split; name the one to evaluate on as "
                                          r".*several:SPLIT \(its splits: train, extra, more\)"):
        sft(only_train, several)


def test_a_directory_of_data_files_has_splits_too(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    for split, n in (("train", 4), ("test", 2)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(split, n)))
    train, held = sft(str(folder), str(folder))
    assert (splits_of(train), splits_of(held)) == (["train"], ["test"])


def test_files_have_no_splits(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows("file", 3)))
    assert len(load_stage_records(str(path), "sft", None, False, LOG, "sft eval", held_out=True)) == 3
    with pytest.raises(ConfigError, match=r"eval.jsonl is a single file or dataset with no splits; drop ':test'"):
        load_stage_records(f"{path}:test", "sft", None, False, LOG, "sft eval", held_out=True)


def test_parse_source(tmp_path):
    odd = tmp_path / "a:b.jsonl"
    odd.write_text("")
    assert parse_source("Anthropic/hh-rlhf:test") == ("Anthropic/hh-rlhf", "test")
    assert parse_source("Anthropic/hh-rlhf") == ("Anthropic/hh-rlhf", None)
    assert parse_source(str(odd)) == (str(odd), None)                     # an existing path is a path
    assert parse_source("data:train[:10%]") == ("data", "train[:10%]")
