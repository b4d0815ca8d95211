"""No hangs: a rank that dies, or a node that drops off the network, ends the job on every rank within
a bounded time, with a line naming the rank that failed.

Three parts, set up by `distributed.init_distributed` in runs of more than one rank:

1. Every collective waits at most `RLHF_DS_COLLECTIVE_TIMEOUT_S` seconds (default 1800, torch's own
   default), then raises. gloo notices a peer that closed its sockets (a killed process) at once; a
   peer that is silent (a node whose link went down, a frozen process) only through this timeout.
2. A heartbeat: each rank writes the time into the rendezvous store (the TCPStore at
   MASTER_ADDR:MASTER_PORT) every 0.5-2 s, from its own thread and its own connection.
3. When a collective fails, the failing rank watches the heartbeats for 2.5 periods and prints one
   line naming the ranks whose heartbeat did not advance (or saying that the store itself, on rank
   0's node, is unreachable), then exits at once with status 1, without running exit handlers that
   could wait on the dead peer. A launcher (deepspeed, torchrun, srun) sees the non-zero exit and
   stops the ranks it started.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Dict, Optional

TIMEOUT_ENV = "RLHF_DS_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
_PREFIX = "rlhf_ds/heartbeat/"


def collective_timeout() -> timedelta:
    """How long a collective may wait for the other ranks (RLHF_DS_COLLECTIVE_TIMEOUT_S, seconds)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        from ..errors import UserError
        raise UserError(f"{TIMEOUT_ENV}={raw!r}: give the collective timeout as a positive number of seconds")
    return timedelta(seconds=seconds)


def local_address(master_addr: str, master_port: int) -> str:
    """The address this host uses to reach the rendezvous (the interface the route picks)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master_addr, master_port))    # UDP: picks the route, sends nothing
            return s.getsockname()[0]
    except OSError:
        return "?"


class Watch:
    """The heartbeat of this rank and the diagnosis of a failed collective."""

    def __init__(self, rank: int, world: int, master_addr: str, master_port: int, timeout_s: float):
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.host, self.port = master_addr, master_port
        # A failed collective waits 2.5 periods to see which heartbeats stopped: short, but not so
        # often that the store is busy.
        self.period = max(0.5, min(2.0, timeout_s / 6))
        self.where = f"{socket.gethostname()} ({local_address(master_addr, master_port)})"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="rlhf_ds-heartbeat", daemon=True)

    def _store(self):
        import torch.distributed as dist
        # Its own client connection: the default store's client belongs to the main thread.
        return dist.TCPStore(self.host, self.port, self.world, is_master=False,
                             timeout=timedelta(seconds=max(2.0, min(10.0, self.timeout_s / 2))),
                             wait_for_workers=False)

    def start(self) -> "Watch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        store = None
        while not self._stop.is_set():
            try:
                store = store or self._store()
                store.set(f"{_PREFIX}{self.rank}", f"{time.time():.3f} {self.where}")
            except Exception:       # the store's host is gone: the main thread's collectives will say so
                store = None
            self._stop.wait(self.period)

    def _read(self, store) -> Dict[int, str]:
        return {r: store.get(f"{_PREFIX}{r}").decode() for r in range(self.world)
                if r != self.rank and store.check([f"{_PREFIX}{r}"])}

    def silent_ranks(self) -> Optional[Dict[int, str]]:
        """{rank: where it ran} for every other rank whose heartbeat does not advance over 2.5 periods
        (a killed rank's last one may be fresh, so a stale time alone would miss it); None when the
        store cannot be reached."""
        try:
            store = self._store()
            before = self._read(store)
            time.sleep(2.5 * self.period)
            after = self._read(store)
        except Exception:
            return None
        out = {}
        for r in range(self.world):
            if r == self.rank:
                continue
            if r not in after:
                out[r] = "never sent a heartbeat"
            elif before.get(r) == after[r]:
                stamp, _, where = after[r].partition(" ")
                out[r] = f"on {where}, silent for {time.time() - float(stamp):.0f} s"
        return out

    def diagnose(self, error: BaseException) -> str:
        silent = self.silent_ranks()
        me = f"rank {self.rank} of {self.world} on {self.where}"
        cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"
        if silent is None:
            who = (f"the rendezvous store at {self.host}:{self.port} (rank 0's node) is unreachable: rank 0 "
                   f"failed or its node's link is down")
        elif silent:
            who = "failed rank(s): " + "; ".join(f"rank {r} ({s})" for r, s in sorted(silent.items()))
        else:
            who = "every other rank still sends heartbeats: the failure began on this rank or in the network"
        return (f"rlhf_ds: {me} stops: a collective failed ({cause}); {who}. The job ends; "
                f"collectives wait at most {self.timeout_s:.0f} s ({TIMEOUT_ENV}).")


_WATCH: Optional[Watch] = None


def is_distributed_failure(error: BaseException) -> bool:
    import torch.distributed as dist
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(s in text for s in (
        "gloo", "Gloo", "Connection closed by peer", "Connection reset by peer", "Timed out waiting",
        "NCCL", "Socket Timeout", "Broken pipe"))


def _excepthook(kind, error, tb) -> None:
    watch = _WATCH
    if watch is None or not is_distributed_failure(error):
        sys.__excepthook__(kind, error, tb)
        return
    traceback.print_exception(kind, error, tb)
    # The launcher may already be stopping the job (SIGTERM) because the failed rank exited: finish the
    # few seconds of diagnosis first (it sends SIGKILL 30 s later anyway).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(watch.diagnose(error), file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Not a normal exit: exit handlers and the process group's destructor would wait on the peer that
    # is gone, which is the hang this module exists to prevent.
    os._exit(1)


def start(rank: int, world: int, master_addr: str, master_port: int, timeout_s: float) -> None:
    global _WATCH
    stop()
    _WATCH = Watch(rank, world, master_addr, master_port, timeout_s).start()
    sys.excepthook = _excepthook


def stop() -> None:
    global _WATCH
    if _WATCH is not None:
        _WATCH.stop()
        _WATCH = None
    if sys.excepthook is _excepthook:
        sys.excepthook = sys.__excepthook__

