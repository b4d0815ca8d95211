"""Two emulated nodes (network namespaces on a bridge, netns.py), one rank each, rendezvous through the
first node's address and gloo over TCP between them, each node's rank started by DeepSpeed's per-node
launcher as `deepspeed --hostfile` does.

1. SFT steps and a ZeRO-3 PPO iteration give the same weights and figures as the same run on 2 ranks
   of one node (same world size, same seeds: the same computation, only carried over another link).
2. A node whose link goes down mid-training ends the job on both nodes within the collective timeout
   plus the launcher's grace, with a line naming the failed rank, and leaves no process behind.
"""
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from ..multirank.launcher import free_port, run_deepspeed
from . import netns
from .conftest import TINY, clean_env, read_jsonl, strip_times
from .jobs import REPO, SFT, long_sft_args, wait_for_steps

pytestmark = pytest.mark.multinode
PPO = os.path.join(REPO, "launch", "train_ppo.py")
RULE = '''
def score(prompts, completions, **columns):
    return [float(len(c) % 3 == 0) + 0.1 * len(c.split()) for c in completions]
'''
TIMEOUT_S = 20
LAUNCHER_GRACE_S = 30


@pytest.fixture
def cluster():
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    with netns.Cluster(2) as c:
        yield c


def _run_on_nodes(cluster, script, args, timeout=600, env=None):
    port = free_port()
    procs = [subprocess.Popen(cluster.launch_cmd(i, 1, port, script, args), cwd=REPO,
                              env=cluster.env(clean_env(**(env or {}))), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for i in range(len(cluster.nodes))]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _sft_args(d):
    return ["--deepspeed", "configs/zero3.json", "--save_dir", d, *TINY, "--sft.max_steps=2", "--sft.eval_interval=100"]


def _ppo_args(d, demo_task, rule):
    return ["--deepspeed", "configs/zero3.json", "--save_dir", d, *TINY,
            f"--model.sft_model_path={os.path.join(demo_task, 'base_model')}", "--model.critic_init=sft",
            f"--rewards.sources=[{{type: function, function: '{rule}:score'}}]", "--ppo.iterations=1",
            "--ppo.rollout_batch_size=8", "--ppo.minibatch_size=8", "--data.demo_eval_prompts=4"]


def _same_weights(a_dir, b_dir):
    a, b = load_file(os.path.join(a_dir, "model.safetensors")), load_file(os.path.join(b_dir, "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_sft_and_zero3_ppo_across_two_nodes_equal_one_node(tmp_path, demo_task, cluster):
    rule = str(tmp_path / "rule.py")
    with open(rule, "w") as f:
        f.write(RULE)
    one, two = str(tmp_path / "one_node"), str(tmp_path / "two_nodes")
    for d in (one, two):
        shutil.copytree(demo_task, os.path.join(d, "task"))
    run_deepspeed(SFT, _sft_args(one), ranks=2)
    run_deepspeed(PPO, _ppo_args(one, demo_task, rule), ranks=2)
    sft_logs = _run_on_nodes(cluster, SFT, _sft_args(two))
    _run_on_nodes(cluster, PPO, _ppo_args(two, demo_task, rule))

    assert "2 rank(s), gloo on cpu" in sft_logs[0] and "ZeRO-3" in sft_logs[0]
    base = load_file(os.path.join(demo_task, "base_model", "model.safetensors"))
    ppo = load_file(os.path.join(two, "ppo", "model.safetensors"))
    assert max(float((ppo[k] - base[k]).abs().max()) for k in base if k in ppo) > 1e-4, "PPO changed nothing"
    _same_weights(os.path.join(one, "sft"), os.path.join(two, "sft"))
    _same_weights(os.path.join(one, "ppo"), os.path.join(two, "ppo"))
    rows = [strip_times([r for r in read_jsonl(os.path.join(d, "logs", "metrics.jsonl"))
                         if r["stage"] in ("sft", "ppo")]) for d in (one, two)]
    assert len(rows[0]) == len(rows[1]) > 0
    for ra, rb in zip(*rows):
        assert ra.keys() == rb.keys()
        for k, v in ra.items():
            if isinstance(v, float):
                assert v == pytest.approx(rb[k], rel=1e-5, abs=1e-7), (ra["stage"], ra["step"], k)
            else:
                assert v == rb[k], (ra["stage"], ra["step"], k)


def test_a_node_whose_link_goes_down_ends_the_job_on_every_node(tmp_path, demo_task, cluster):
    save_dir = str(tmp_path / "run")
    shutil.copytree(demo_task, os.path.join(save_dir, "task"))
    port = free_port()
    procs = [subprocess.Popen(cluster.launch_cmd(i, 1, port, SFT, long_sft_args(save_dir)), cwd=REPO,
                              env=cluster.env(clean_env(RLHF_DS_COLLECTIVE_TIMEOUT_S=str(TIMEOUT_S))),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for i in range(2)]
    try:
        wait_for_steps(save_dir, procs[0])
        cluster.nodes[1].link(up=False)
        t0 = time.time()
        bound = TIMEOUT_S + LAUNCHER_GRACE_S + 30
        outs = [p.communicate(timeout=max(1.0, bound - (time.time() - t0)))[0] for p in procs]
    except BaseException:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        raise
    elapsed = time.time() - t0
    for p, out in zip(procs, outs):
        assert p.returncode != 0, out[-3000:]
    # Node 0 (rank 0, which hosts the rendezvous store) sees rank 1's heartbeat stop; node 1 cannot
    # reach the store at all.
    assert "rlhf_ds: rank 0 of 2" in outs[0] and "failed rank(s): rank 1 (" in outs[0], outs[0][-3000:]
    assert "rlhf_ds: rank 1 of 2" in outs[1] and "is unreachable: rank 0 failed or its node's link is down" in \
        outs[1], outs[1][-3000:]
    assert elapsed >= TIMEOUT_S * 0.8, f"ended after {elapsed:.0f} s, before the collective timeout"
    time.sleep(1)
    for node in cluster.nodes:
        left = subprocess.run(["ip", "netns", "pids", node.namespace], capture_output=True, text=True).stdout.split()
        assert not left, f"processes left behind in {node.namespace}: {left}"
