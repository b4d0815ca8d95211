"""The DeepSpeed JSON configs that ship with rlhf_ds, found by short name from any directory.

    --deepspeed zero3                 rlhf_ds/ds_configs/zero3.json (this package's copy)
    --deepspeed configs/zero3.json    that file when it exists from where you run, else ours
    --deepspeed my/own.json           your file (never replaced by ours)

The files live here, inside the package, so a non-editable install carries them (setup.py lists
them as package data); the repository's `configs/*.json` are links to them, so the commands in the
README work unchanged from the repository root.
"""
from __future__ import annotations

import os
from typing import List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))


def names() -> List[str]:
    """Short names of the shipped configs: zero2, zero3, ..."""
    return sorted(f[:-len(".json")] for f in os.listdir(_HERE) if f.endswith(".json"))


def shipped_path(name: str) -> Optional[str]:
    """The shipped file for a short name (`zero3`, `zero3.json`), or for the repository path the README
    uses (`configs/zero3.json`, possibly with `./`); None for anything else."""
    head, base = os.path.split(os.path.normpath(name))
    if head not in ("", "configs"):
        return None
    stem = base[:-len(".json")] if base.endswith(".json") else base
    return os.path.join(_HERE, stem + ".json") if stem in names() else None


def resolve(name: str) -> str:
    """The file to read for `--deepspeed NAME`: NAME itself when it is a file, else the shipped config
    it names. Raises PathNotFoundError (a user error) listing the shipped names when neither exists."""
    if os.path.isfile(name):
        return name
    shipped = shipped_path(name)
    if shipped is not None:
        return shipped
    from ..errors import PathNotFoundError

    raise PathNotFoundError(f"DeepSpeed config not found: {name} (give a JSON file, or one of the shipped "
                         f"configs by name: {', '.join(names())})")
