"""A real SLURM (slurmctld + slurmd from Debian's slurm-wlm, munge authentication, set up in a temporary
folder by setup_slurm.sh) runs `sbatch launch/slurm/train_ppo.sbatch` with 2 tasks: the whole recipe
(SFT, reward model, PPO) to the end, through a requeue (`scontrol requeue`, what a preemption does)
after PPO's first checkpoint, which the requeued job continues from.

Twice: one node with 2 tasks, and two emulated nodes (netns.py) with a slurmd each and one task each,
MASTER_ADDR the first node's name as the script takes it from SLURM. srun starts the ranks, which
read SLURM_PROCID / SLURM_NTASKS themselves.
"""
import contextlib
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from . import netns
from .conftest import TINY, clean_env, read_jsonl
from .jobs import REPO

pytestmark = pytest.mark.multinode
SETUP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "setup_slurm.sh")
SBATCH = os.path.join(REPO, "launch", "slurm", "train_ppo.sbatch")


@pytest.fixture(params=["one_node", "two_emulated_nodes"])
def slurm(request, tmp_path):
    """(environment for the SLURM commands and the job, sbatch's node options, the job's node list or
    None for this host)."""
    if os.geteuid() != 0:
        pytest.skip("a SLURM cluster of our own needs root (slurmd runs jobs as their users)")
    with contextlib.ExitStack() as stack:
        extra, nodes = {}, ["--nodes=1", "--ntasks-per-node=2"]
        if request.param == "two_emulated_nodes":
            why = netns.unavailable()
            if why:
                pytest.skip(why)
            cluster = stack.enter_context(netns.Cluster(2))
            extra = {"SLURM_NODES": " ".join(f"node{i}={n.address}@{n.namespace}" for i, n in enumerate(cluster.nodes)),
                     "SLURMCTLD_ADDR": cluster.host_address}
            nodes = ["--nodes=2", "--ntasks-per-node=1"]
        d = str(tmp_path / "slurm")
        made = subprocess.run([SETUP, "start", d], capture_output=True, text=True, timeout=600,
                              env={**os.environ, **extra})
        stack.callback(subprocess.run, [SETUP, "stop", d], capture_output=True)
        if made.returncode != 0:
            if shutil.which("slurmctld") is None:
                pytest.skip(f"slurm-wlm is not installed and could not be: {made.stderr.strip()[-300:]}")
            raise AssertionError(f"setup_slurm.sh failed:\n{made.stdout}\n{made.stderr}")
        env = clean_env(SLURM_CONF=os.path.join(d, "slurm.conf"))
        if request.param == "two_emulated_nodes":
            env.update(GLOO_SOCKET_IFNAME="eth0")   # the job's ranks talk over the nodes' network
        yield env, nodes, ("node[0-1]" if request.param == "two_emulated_nodes" else None)


def _job(env, job_id):
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_sbatch_runs_the_recipe_and_a_requeue_continues_from_the_checkpoint(tmp_path, demo_task, slurm):
    slurm, nodes, node_list = slurm
    save_dir = str(tmp_path / "run")
    shutil.copytree(demo_task, os.path.join(save_dir, "task"))
    log = str(tmp_path / "job.out")
    # The script asks for 2 nodes of 8 GPUs and 8 tasks; here 2 tasks on CPUs, on one node or two.
    submit = subprocess.run(
        ["sbatch", "--parsable", "--requeue", *nodes, "--gpus-per-node=0",
         "--cpus-per-task=1", f"--chdir={REPO}", f"--output={log}", "--open-mode=append", SBATCH,
         *TINY, "--ppo.iterations=6", "--save_interval=2"],
        env={**slurm, "SAVE_DIR": save_dir, "MASTER_PORT": str(20000 + os.getpid() % 20000)},
        capture_output=True, text=True, check=True)
    job = submit.stdout.strip().split(";")[0]
    latest = os.path.join(save_dir, "checkpoints", "ppo", "latest")
    _wait(lambda: os.path.exists(latest) or _job(slurm, job).get("JobState") in ("FAILED", "COMPLETED"), 900,
          "PPO's first checkpoint")
    assert os.path.exists(latest), open(log).read()[-4000:]
    subprocess.run(["scontrol", "requeue", job], env=slurm, check=True, capture_output=True)
    # SLURM holds a requeued job back for cred_expire seconds (10 here, setup_slurm.sh).
    state = _wait(lambda: _job(slurm, job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                  and _job(slurm, job), 900, "the requeued job's end")
    text = open(log).read()
    assert state["JobState"] == "COMPLETED", text[-4000:]
    assert state["Restarts"] == "1", state
    if node_list is not None:
        assert state["NodeList"] == node_list, state
    assert text.count("2 rank(s), gloo on cpu") == 2, "the job should have started twice, on 2 ranks"
    resumed = re.findall(r"ppo: resumed at iteration (\d+)", text)
    assert resumed and int(resumed[0]) in (2, 4), text[-4000:]
    # The stages that had finished are left as they were; PPO logged each iteration once.
    assert "sft: reusing" in text and "reward: reusing" in text
    rows = [r["step"] for r in read_jsonl(os.path.join(save_dir, "logs", "metrics.jsonl"))
            if r["stage"] == "ppo" and "reward_mean" in r]
    assert rows == [1, 2, 3, 4, 5, 6], rows
    summary = json.load(open(os.path.join(save_dir, "logs", "summary.json")))
    assert summary["ppo_iterations"] == 6 and summary["world_size"] == 2
    assert os.path.isfile(os.path.join(save_dir, "ppo", "model.safetensors"))
