"""Errors that are the user's to fix (data, config, model paths, LoRA targets): one line naming what to
change, exit status 2, no traceback; on every rank of a multi-rank launch."""
import json
import os
import shutil

import pytest

from rlhf_ds.cli import main_ppo, main_sft

from ..conftest import TINY
from ..multirank.launcher import REPO, deepspeed_cmd  # noqa: F401  (REPO: launch scripts)


def _fails_with(capsys, main, argv, *expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    prog = "train_ppo.py" if main is main_ppo else "train_sft.py"
    assert lines[0].startswith(f"{prog}: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _write(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _base(save_dir):
    return os.path.join(save_dir, "task", "base_model")


def test_empty_prompt_file(save_dir, tmp_path, capsys):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    _fails_with(capsys, main_ppo, [*TINY, f"--save_dir={save_dir}", f"--model.sft_model_path={_base(save_dir)}",
                                   f"--model.reward_model_path={_base(save_dir)}", f"--ppo.prompt_path={empty}"],
                f"{empty}: no records found")


def test_data_file_of_an_unknown_type(save_dir, tmp_path, capsys):
    data = tmp_path / "sft.xyz"
    data.write_text("{}\n")
    _fails_with(capsys, main_sft, [*TINY, f"--save_dir={save_dir}", f"--sft.data_path={data}"],
                "unsupported file type '.xyz'")


def test_too_little_data(save_dir, tmp_path, capsys):
    rows = [{"prompt": "describe the cat", "response": "the cat is warm."}] * 3
    one = _write(tmp_path / "one.jsonl", rows[:1])
    _fails_with(capsys, main_sft, [*TINY, f"--save_dir={save_dir}", f"--sft.data_path={one}"],
                "cannot hold out 1 of 1 records")
    three = _write(tmp_path / "three.jsonl", rows)
    _fails_with(capsys, main_sft, [*TINY, f"--save_dir={save_dir}", f"--sft.data_path={three}",
                                   f"--sft.eval_path={one}"], "3 records is smaller than one global batch of 16")


def test_batch_sizes_that_do_not_divide(save_dir, capsys):
    _fails_with(capsys, main_sft, [*TINY, f"--save_dir={save_dir}", "--sft.micro_batch_size=5"],
                "cannot be split into micro-batches of 5")


def test_deepspeed_config_with_a_refused_key(save_dir, tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupLR"}}))
    _fails_with(capsys, main_sft, [*TINY, f"--save_dir={save_dir}", f"--deepspeed.config={ds}"],
                f"{ds}: key 'scheduler' is not used by rlhf_ds")


def test_model_directory_without_a_model(save_dir, tmp_path, capsys):
    only_tokenizer = tmp_path / "only_tokenizer"
    shutil.copytree(os.path.join(save_dir, "task", "tokenizer"), only_tokenizer)
    _fails_with(capsys, main_sft, [*TINY, f"--save_dir={save_dir}", f"--model.name_or_path={only_tokenizer}",
                                   f"--sft.data_path={save_dir}/task/data/sft.jsonl"],
                f"{only_tokenizer}: no model here")


def test_lora_targets_that_match_nothing(save_dir, capsys):
    _fails_with(capsys, main_sft, [*TINY, f"--save_dir={save_dir}", "--lora.r=4", "--lora.apply_to=sft",
                                   "--lora.target_modules=q_proj,no_such_proj"], "no_such_proj")
