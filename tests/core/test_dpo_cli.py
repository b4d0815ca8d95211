"""launch/train_dpo.py as a user runs it: a malformed KTO record stops the run with one line that names the
file and the line, exit status 2, no traceback; a bad dpo option is refused the same way."""
import json
import os
import subprocess
import sys

import pytest

from ..conftest import TINY, clean_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(save_dir, *extra):
    cmd = [sys.executable, os.path.join(REPO, "launch", "train_dpo.py"), "--save_dir", save_dir, *TINY,
           f"--model.sft_model_path={save_dir}/task/base_model", *extra]
    return subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)


def test_a_malformed_kto_record_names_its_file_and_line(save_dir):
    path = os.path.join(save_dir, "kto.jsonl")
    rows = [{"prompt": "describe the cat", "completion": "the cat is warm .", "label": True},
            {"prompt": "describe the dog", "completion": "the dog is sad .", "label": False},
            {"prompt": "describe the cow", "completion": "the cow is kind .", "label": "sometimes"}]
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = _run(save_dir, "--dpo.loss_type=kto", f"--dpo.data_path={path}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train_dpo.py:")]
    assert lines == [f"train_dpo.py: {path}:3: field 'label': expected true (desirable) or false (undesirable), got "
                     f"'sometimes'"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("extra,message", [
    (["--dpo.loss_type=robust"], "dpo.label_smoothing must be in (0, 0.5) for loss_type robust"),
    (["--dpo.loss_type=dpo"], "dpo.loss_type: 'dpo' is not allowed; allowed: sigmoid, ipo, conservative, robust, "
                              "hinge, simpo, kto"),
])
def test_bad_dpo_options_are_one_line(save_dir, extra, message):
    proc = _run(save_dir, *extra)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
