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
    """Put the finished directory `staged` where `final` was: the old one is removed first, then one
    rename, so `final` is never a half-written directory."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staged, final)
