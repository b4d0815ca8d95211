"""A directory swap never deletes its destination before its source is known to exist."""
import os

import pytest

from rlhf_ds.files import replace_dir


def _dir(path, text):
    os.makedirs(path)
    with open(os.path.join(path, "f"), "w") as f:
        f.write(text)


def test_missing_source_leaves_destination_alone(tmp_path):
    final = str(tmp_path / "model")
    _dir(final, "old")
    with pytest.raises(FileNotFoundError, match="model.best does not exist"):
        replace_dir(str(tmp_path / "model.best"), final)
    assert open(os.path.join(final, "f")).read() == "old"


def test_swap_replaces_whole_and_leaves_nothing_aside(tmp_path):
    final, staged = str(tmp_path / "model"), str(tmp_path / "model.partial")
    _dir(final, "old")
    os.makedirs(os.path.join(final, "only_in_old"))
    _dir(staged, "new")
    replace_dir(staged, final)
    assert open(os.path.join(final, "f")).read() == "new"
    assert not os.path.exists(os.path.join(final, "only_in_old"))
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_swap_into_a_new_place(tmp_path):
    staged = str(tmp_path / "a")
    _dir(staged, "new")
    replace_dir(staged, str(tmp_path / "b"))
    assert open(tmp_path / "b" / "f").read() == "new"
