"""The README's configuration table lists exactly the settings the code reads, with their defaults."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from offload_core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _documented() -> dict[str, str]:
    rows = re.findall(r"^\| `(OFFLOAD_[A-Z0-9_]+)` \| ([^|]+) \|", README.read_text(), flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert set(_documented()) == {f"OFFLOAD_{name}" for name in Settings.model_fields}


def test_documented_defaults_match_the_code() -> None:
    documented = _documented()
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if isinstance(default, list):
            default = ",".join(str(item) for item in default)
        text = documented[f"OFFLOAD_{name}"]
        if default in (None, ""):
            continue  # documented in words ("(none)", the node-name pattern)
        assert f"`{default}`" in text, f"OFFLOAD_{name}: README says {text}, code says {default}"


def test_the_test_folders_table_lists_every_test_folder() -> None:
    listed = set(re.findall(r"^\| `tests/([a-z_]+)` \|", README.read_text(), flags=re.MULTILINE))
    tests = README.parent / "tests"
    on_disk = {folder.name for folder in tests.iterdir() if folder.is_dir() and any(folder.glob("test_*.py"))}
    assert listed == on_disk
