"""Offload's Redis scripts, kept as `.lua` files in each package's `lua/` folder (package data)
so they read, diff and lint as Lua; each file starts with its KEYS and ARGV."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def lua(name: str, package: str = "offload_core.store") -> str:
    """The text of ``lua/<name>.lua`` in ``package``."""
    return files(package).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
