"""Writing files and directories so that a crash never leaves one half-written."""
from __future__ import annotations

import os
import shutil


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`:
    readers see the old content or the new, never a prefix."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_dir(staged: str, final: str) -> None:
    """Put the finished directory `staged` where `final` was.

    Nothing is deleted before `staged` is known to exist (a missing source raises and leaves `final` as
    it was). The old `final` is renamed aside, not removed, until `staged` has taken its place: a crash
    between the two renames leaves it whole under `<final>.old`, never a half-deleted directory."""
    if not os.path.isdir(staged):
        raise FileNotFoundError(f"cannot replace {final}: its replacement {staged} does not exist")
    aside = final.rstrip("/") + ".old"
    shutil.rmtree(aside, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, aside)
    os.replace(staged, final)
    shutil.rmtree(aside, ignore_errors=True)
