"""Offload's Redis scripts, kept as `.lua` files beside this module (package data) so they read,
diff and lint as Lua; each file starts with its KEYS and ARGV."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def lua(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
