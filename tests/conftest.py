"""Fixtures shared by every test folder: the demo task at a tiny size, and run directories."""
import os
import shutil

import pytest

from rlhf_ds.config import load_config

# Small enough for CI: every stage runs a few steps on a few hundred records.
TINY = [
    "--data.demo_sft_records=256", "--data.demo_preference_records=256", "--data.demo_prompt_records=128",
    "--data.demo_eval_prompts=16", "--sft.max_steps=6", "--sft.batch_size=16", "--reward.max_steps=6",
    "--reward.batch_size=16", "--ppo.iterations=3", "--ppo.rollout_batch_size=16", "--ppo.minibatch_size=8",
    "--ppo.eval_interval=0", "--generation.max_new_tokens=12", "--logging.progress=false",
    "--logging.tensorboard=false", "--logging.plots=false",
]


@pytest.fixture(scope="session")
def demo_task(tmp_path_factory):
    """The demo task's files for the TINY sizes, built once and copied into each run's save_dir."""
    from rlhf_ds import tasks

    cfg = load_config(None, TINY)
    d = cfg.data
    path = str(tmp_path_factory.mktemp("demo") / "task")
    tasks.prepare_demo(path, seed=cfg.seed, arch=cfg.model.arch, ranking_k=d.demo_ranking_k, sft=d.demo_sft_records,
                       preference=d.demo_preference_records, prompts=d.demo_prompt_records,
                       eval_prompts=d.demo_eval_prompts, ranking=max(1, d.demo_ranking_records))
    return path


@pytest.fixture
def save_dir(tmp_path, demo_task):
    out = tmp_path / "run"
    shutil.copytree(demo_task, out / "task")
    # task.json records absolute paths; point them at the copy.
    import json
    info = json.loads((out / "task" / "task.json").read_text())
    info["paths"] = {k: v.replace(demo_task, str(out / "task")) for k, v in info["paths"].items()}
    (out / "task" / "task.json").write_text(json.dumps(info))
    return str(out)


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CROSS_RANK", "CROSS_SIZE")


def clean_env(**extra):
    """The environment for a test's subprocess, without the process-group variables that an in-process
    test's init_distributed left behind (a child would otherwise try to join that group's port)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def read_jsonl(path):
    import json
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def strip_times(rows):
    """Metrics without wall-clock and CPU-time fields (those differ between any two runs)."""
    drop = ("time",)
    return [{k: v for k, v in r.items() if k not in drop and not k.startswith("time_") and not k.endswith("_per_s")}
            for r in rows]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
