"""`deepspeed --hostfile` across two emulated nodes (netns.py), each running its own sshd (sshd.py): the
runner in node 0 checks passwordless ssh, pdsh starts DeepSpeed's per-node launcher on both nodes,
and environment variables reach node 1 through a .deepspeed_env file (DS_ENV_FILE). The SFT steps it
runs give the weights of the same run on 2 ranks of one node.
"""
import os
import shutil
import signal
import subprocess

import pytest

from ..multirank.launcher import free_port, run_deepspeed
from . import netns, sshd
from .conftest import TINY, clean_env
from .jobs import REPO, SFT
from .test_emulated_nodes import _same_weights

pytestmark = pytest.mark.multinode


def _sft_args(d):
    return ["--deepspeed", "configs/zero3.json", "--save_dir", d, *TINY, "--sft.max_steps=2", "--sft.eval_interval=100"]


def test_a_hostfile_launch_across_two_nodes_equals_one_node(tmp_path, demo_task):
    why = netns.unavailable() or sshd.unavailable()
    if why:
        pytest.skip(why)
    one, two = str(tmp_path / "one_node"), str(tmp_path / "hostfile")
    for d in (one, two):
        shutil.copytree(demo_task, os.path.join(d, "task"))
    run_deepspeed(SFT, _sft_args(one), ranks=2)

    with netns.Cluster(2) as cluster, sshd.SSHNodes(cluster, str(tmp_path / "ssh")):
        hostfile = str(tmp_path / "hostfile.txt")
        with open(hostfile, "w") as f:
            f.writelines(f"{node.address} slots=1\n" for node in cluster.nodes)
        ds_env = str(tmp_path / "ds_env")
        with open(ds_env, "w") as f:
            f.write("GLOO_SOCKET_IFNAME=eth0\nPYTHONUNBUFFERED=1\nRLHF_DS_COLLECTIVE_TIMEOUT_S=300\n")
        runner = shutil.which("deepspeed")
        # Never SIGTERM/SIGINT the runner: on those it runs `pkill -f` over pdsh on every host, and the
        # emulated hosts share this machine's processes.
        proc = subprocess.Popen(["ip", "netns", "exec", cluster.nodes[0].namespace, runner, "--hostfile", hostfile,
                                 "--master_addr", cluster.nodes[0].address, "--master_port", str(free_port()),
                                 SFT, *_sft_args(two)], cwd=REPO, env=clean_env(DS_ENV_FILE=ds_env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out = proc.communicate(timeout=600)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, out[-4000:]
    # pdsh prefixes each node's lines with its address: both nodes ran a rank.
    for node in cluster.nodes:
        assert f"{node.address}: " in out and "exits successfully" in out, out[-3000:]
    assert "2 rank(s), gloo on cpu" in out
    _same_weights(os.path.join(one, "sft"), os.path.join(two, "sft"))
