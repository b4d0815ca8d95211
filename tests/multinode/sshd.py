"""An sshd in each emulated node, so that `deepspeed --hostfile` can reach the nodes as it reaches real
ones (pdsh over ssh, passwordless, by key).

Everything lives in one temporary folder: host key, the client's key, authorized_keys, each sshd's
config. The client side (ssh as pdsh and DeepSpeed's runner call it, in node 0) reads its options from
/etc/ssh/ssh_config, which `ip netns exec` replaces for that namespace only by
/etc/netns/<namespace>/ssh/ (removed again by `stop`): nothing of the host's own ssh setup changes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import List, Optional

from .netns import Cluster


def unavailable() -> Optional[str]:
    for tool in ("sshd", "ssh", "ssh-keygen", "pdsh"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"hostfile launches need {tool} (apt-get install openssh-server pdsh)"
    return None


class SSHNodes:
    def __init__(self, cluster: Cluster, folder: str):
        self.cluster, self.folder = cluster, folder
        self.procs: List[subprocess.Popen] = []
        self.client_etc = f"/etc/netns/{cluster.nodes[0].namespace}"

    def __enter__(self) -> "SSHNodes":
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        f = self.folder
        os.makedirs(f, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)      # sshd's privilege-separation folder
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(f, key)], check=True)
        shutil.copy(os.path.join(f, "client_key.pub"), os.path.join(f, "authorized_keys"))
        for i, node in enumerate(self.cluster.nodes):
            conf = os.path.join(f, f"sshd_{i}.conf")
            with open(conf, "w") as c:
                c.write(f"ListenAddress {node.address}\nPort 22\nHostKey {f}/host_key\n"
                        f"AuthorizedKeysFile {f}/authorized_keys\nPermitRootLogin prohibit-password\n"
                        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                        f"StrictModes no\nPidFile {f}/sshd_{i}.pid\nAcceptEnv *\n")
            sshd = shutil.which("sshd") or "/usr/sbin/sshd"
            with open(os.path.join(f, f"sshd_{i}.log"), "w") as log:
                self.procs.append(subprocess.Popen(["ip", "netns", "exec", node.namespace, sshd, "-D", "-e", "-f", conf],
                                                   stdout=subprocess.DEVNULL, stderr=log))
        os.makedirs(os.path.join(self.client_etc, "ssh"), exist_ok=True)
        with open(os.path.join(self.client_etc, "ssh", "ssh_config"), "w") as c:
            c.write(f"Host *\n  IdentityFile {f}/client_key\n  User root\n  StrictHostKeyChecking no\n"
                    f"  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n")
        deadline = time.time() + 20
        for node in self.cluster.nodes:
            while True:
                r = subprocess.run(["ip", "netns", "exec", self.cluster.nodes[0].namespace, "ssh", node.address,
                                    "true"], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"ssh to {node.address} does not work: {r.stderr.strip()}")
                time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.client_etc, ignore_errors=True)
