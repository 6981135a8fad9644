"""Unit tests see the settings' defaults and what each test sets, never the environment the suite
happens to run in (an OFFLOAD_* variable exported in a shell changed their outcome)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from offload_core.settings import Settings, get_settings

SETTING_VARIABLES = frozenset(f"OFFLOAD_{name}" for name in Settings.model_fields)


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in SETTING_VARIABLES & set(os.environ):
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
