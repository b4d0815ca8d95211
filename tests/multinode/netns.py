"""Emulated nodes on one machine: network namespaces joined by veth pairs on a bridge.

Each node is a namespace with its own interface `eth0` and address 10.<net>.0.<i+1>/24; the host ends
of the veth pairs hang on one bridge, so the nodes reach each other over TCP as separate machines
would, and nothing else (not the host's loopback, where a rendezvous on the wrong interface would
silently succeed). They share the filesystem, as nodes share the checkpoint folder on a cluster.
Taking a node's host-side link down cuts it off without closing any connection: what a failed
switch port or cable looks like to its peers.

Needs root (CAP_NET_ADMIN) and `ip`; `unavailable()` says why not, for a skip.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import List, Optional


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def unavailable() -> Optional[str]:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "emulated nodes need root (network namespaces, veth pairs, a bridge)"
    if shutil.which("ip") is None:
        return "emulated nodes need the `ip` command (iproute2)"
    probe = f"rlprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Node:
    namespace: str
    address: str
    host_link: str          # the veth end on the bridge, in the host's namespace

    def link(self, up: bool) -> None:
        _ip("link", "set", self.host_link, "up" if up else "down")


class Cluster:
    """`n` emulated nodes; use as a context manager (everything is removed on exit)."""

    def __init__(self, n: int):
        tag = uuid.uuid4().hex[:5]
        self.bridge = f"rlbr{tag}"
        self.net = 100 + int(tag, 16) % 100          # 10.<net>.0.0/24, unlikely to clash with a real one
        self.nodes: List[Node] = [Node(f"rlnode{tag}{i}", f"10.{self.net}.0.{i + 1}", f"rlv{tag}{i}")
                                  for i in range(n)]
        # This host's own address on the nodes' network (the bridge's), for services outside the nodes
        # such as a SLURM controller.
        self.host_address = f"10.{self.net}.0.254"

    def __enter__(self) -> "Cluster":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for node in self.nodes:
                _ip("netns", "add", node.namespace)
                _ip("link", "add", node.host_link, "type", "veth", "peer", "name", "eth0", "netns", node.namespace)
                _ip("link", "set", node.host_link, "master", self.bridge)
                _ip("link", "set", node.host_link, "up")
                self.run(node, "ip", "addr", "add", f"{node.address}/24", "dev", "eth0")
                self.run(node, "ip", "link", "set", "eth0", "up")
                self.run(node, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            for pid in _ip("netns", "pids", node.namespace, check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("link", "del", node.host_link, check=False)
            _ip("netns", "del", node.namespace, check=False)
        _ip("link", "del", self.bridge, check=False)

    def run(self, node: Node, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", node.namespace, *cmd], check=True, capture_output=True,
                              text=True)

    def launch_cmd(self, node_rank: int, ranks_per_node: int, master_port: int, script: str,
                   args: List[str]) -> List[str]:
        """The command that starts node `node_rank`'s ranks inside its namespace with DeepSpeed's
        per-node launcher (what `deepspeed --hostfile` runs on each host over ssh/pdsh)."""
        world = {f"node{i}": list(range(ranks_per_node)) for i in range(len(self.nodes))}
        info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
        return ["ip", "netns", "exec", self.nodes[node_rank].namespace,
                sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={info}",
                f"--node_rank={node_rank}", f"--master_addr={self.nodes[0].address}",
                f"--master_port={master_port}", script, *args]

    def env(self, base: dict) -> dict:
        # gloo picks its interface from the hostname, which every namespace shares with the host;
        # name the node's interface, as on a real cluster with several networks.
        return {**base, "GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
