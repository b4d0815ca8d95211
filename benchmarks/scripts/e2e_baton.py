"""Turn-taking between the end-to-end benchmark's processes (rlhf_ds, TRL, ...), iteration by iteration.

All tools start at once and load their models side by side (untimed); then exactly one of them runs an
iteration at a time, in a fixed rotation (rlhf_ds, TRL, rlhf_ds, TRL, ...), and the others sleep until
their turn. On a machine that other work shares, load that comes and goes then hits every tool's
iterations alike (a slow minute costs each tool about one iteration), which back-to-back processes
cannot promise: there, one tool's whole run can fall into a busy stretch. A tool times its iterations
between taking the baton and handing it on, so waiting is never counted.

Driven by environment variables (unset: no turn-taking, the process runs alone):
    RLHF_DS_E2E_BATON_DIR    a directory the processes share
    RLHF_DS_E2E_BATON_NAME   this process's name
    RLHF_DS_E2E_BATON_ORDER  every name, comma-separated, in the order of the turns
"""
import os
import time

POLL_S = 0.005
TIMEOUT_S = 3600.0


class Baton:
    def __init__(self):
        self.dir = os.environ.get("RLHF_DS_E2E_BATON_DIR")
        self.name = os.environ.get("RLHF_DS_E2E_BATON_NAME", "")
        self.order = [n for n in os.environ.get("RLHF_DS_E2E_BATON_ORDER", "").split(",") if n]
        self.enabled = bool(self.dir and self.name in self.order and len(self.order) > 1)
        self.held = False

    def _path(self, what: str) -> str:
        return os.path.join(self.dir, what)

    def _write(self, what: str, text: str) -> None:
        tmp = self._path(f".{what}.{self.name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self._path(what))        # atomic: a reader sees the old or the new name

    def _read(self, what: str) -> str:
        try:
            with open(self._path(what)) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: waited {TIMEOUT_S:.0f} s for {what}")
            time.sleep(POLL_S)

    def take(self) -> None:
        """Block until it is this process's turn (the first call also says this process is ready)."""
        if not self.enabled or self.held:
            return
        if not os.path.exists(self._path(f"ready.{self.name}")):
            self._write(f"ready.{self.name}", "")

        def my_turn() -> bool:
            if self.name == self.order[0] and not os.path.exists(self._path("turn")):
                if all(os.path.exists(self._path(f"ready.{n}")) for n in self.order):
                    self._write("turn", self.name)     # everyone has loaded: the first turn starts
            return self._read("turn") == self.name

        self._wait(my_turn, "its turn")
        self.held = True

    def give(self) -> None:
        """Hand the turn to the next process in the rotation."""
        if not self.enabled or not self.held:
            return
        self.held = False
        self._write("turn", self.order[(self.order.index(self.name) + 1) % len(self.order)])

    def finish(self) -> None:
        """After the last timed iteration: hand on the turn, and wait until every process is done, so
        that this one's teardown never runs beside another's timed iteration."""
        if not self.enabled:
            return
        self.give()
        self._write(f"done.{self.name}", "")
        self._wait(lambda: all(os.path.exists(self._path(f"done.{n}")) for n in self.order), "the others")
