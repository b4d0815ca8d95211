"""The shipped DeepSpeed configs: `--deepspeed zero3` (or the README's configs/zero3.json) from any directory,
in an editable and in a non-editable install."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from rlhf_ds.engine.ds_config import load_ds_config
from rlhf_ds.errors import PathNotFoundError

from ..conftest import TINY, clean_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = ("qlora_single_gpu", "zero2", "zero3", "zero3_offload")


def _repo_json(name):
    with open(os.path.join(REPO, "configs", f"{name}.json")) as f:
        return json.load(f)


def test_repository_configs_are_the_shipped_files():
    for name in SHIPPED:
        repo, shipped = os.path.join(REPO, "configs", f"{name}.json"), os.path.join(REPO, "rlhf_ds", "ds_configs",
                                                                                       f"{name}.json")
        assert os.path.realpath(repo) == os.path.realpath(shipped), name


def test_short_names_and_readme_paths_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in SHIPPED:
        for spelling in (name, f"{name}.json", f"configs/{name}.json", f"./configs/{name}.json"):
            assert load_ds_config(spelling) == _repo_json(name), spelling
    with pytest.raises(PathNotFoundError, match="shipped configs by name: qlora_single_gpu, zero2, zero3, "
                                                "zero3_offload"):
        load_ds_config("zero9")
    # A path that is not the README's configs/ folder is the user's file, never replaced by ours.
    with pytest.raises(PathNotFoundError, match="elsewhere/zero3.json"):
        load_ds_config("elsewhere/zero3.json")


def test_a_file_of_your_own_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("configs")
    with open("configs/zero3.json", "w") as f:
        json.dump({"zero_optimization": {"stage": 1}}, f)
    assert load_ds_config("configs/zero3.json") == {"zero_optimization": {"stage": 1}}
    assert load_ds_config("zero3") == _repo_json("zero3")          # a short name is always ours


def test_sft_runs_from_another_directory_with_a_short_name(save_dir, tmp_path):
    """The launch script run as a user would, outside the repository (cwd has no configs/)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "train_sft.py"), "--deepspeed", "zero3",
                           "--save_dir", save_dir, *TINY, "--sft.max_steps=1"], cwd=str(elsewhere), env=clean_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "ZeRO-3" in proc.stdout
    assert os.path.isfile(os.path.join(save_dir, "sft", "model.safetensors"))


def test_non_editable_install_ships_the_configs(tmp_path):
    """Build a wheel from a copy of the sources, install it into a folder (no editable link back to the
    repository) and load the configs by name from yet another directory."""
    src, target, wheels, elsewhere = (tmp_path / d for d in ("src", "target", "wheels", "elsewhere"))
    src.mkdir()
    elsewhere.mkdir()
    shutil.copy(os.path.join(REPO, "setup.py"), src)
    shutil.copy(os.path.join(REPO, "README.md"), src)
    for pkg in ("rlhf_ds", "rlhf_kernels"):
        shutil.copytree(os.path.join(REPO, pkg), src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True,
                   cwd=str(src), capture_output=True, timeout=300)
    wheel, = wheels.iterdir()
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    code = ("import json, rlhf_ds; from rlhf_ds.engine.ds_config import load_ds_config; "
            "print(json.dumps([rlhf_ds.__file__, load_ds_config('zero3'), load_ds_config('configs/zero2.json')]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(elsewhere), env=clean_env(PYTHONPATH=str(target)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, zero3, zero2 = json.loads(proc.stdout.strip().splitlines()[-1])
    assert where.startswith(str(target))            # the installed copy, not the repository
    assert zero3 == _repo_json("zero3") and zero2 == _repo_json("zero2")


def test_memory_estimate_takes_short_names(tmp_path, monkeypatch):
    from rlhf_ds.memory import resolve_ds_config
    from rlhf_ds.memory_estimate import MemoryEstimateError

    monkeypatch.chdir(tmp_path)
    assert resolve_ds_config("zero3_offload") == _repo_json("zero3_offload")
    assert resolve_ds_config("configs/zero2.json") == _repo_json("zero2")
    with pytest.raises(MemoryEstimateError, match="DeepSpeed config not found: zero9"):
        resolve_ds_config("zero9")
