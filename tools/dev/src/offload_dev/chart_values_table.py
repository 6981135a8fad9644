"""Write the values table of the chart's README from ``values.yaml`` (``make k8s``).

Every key of ``values.yaml`` has its description in the comment above it; the table lists each
key with its default and that comment, between two markers in ``deploy/helm/offload/README.md``.
Keys inside list items (the worker sets, Ingress paths, peers) are examples, not settings, and
are left out. A test fails when the table differs from what this writes.
"""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[4]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "offload"
BEGIN = "<!-- values table: written by `make k8s` from values.yaml; edit the comments there -->"
END = "<!-- end of values table -->"
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][\w-]*):")


def documented_keys(values_text: str) -> list[tuple[str, str]]:
    """(dotted path, the comment above it) of every key outside list items, in file order."""
    lines = values_text.splitlines()
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    list_indent = -1
    keys = []
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            comment = []
            continue
        if stripped.startswith("- "):
            list_indent = indent if list_indent < 0 else min(list_indent, indent)
            comment = []
            continue
        if list_indent >= 0 and indent > list_indent:
            comment = []
            continue
        match = KEY_LINE.match(line)
        if match:
            list_indent = -1
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            keys.append((".".join(key for _, key in stack), " ".join(comment)))
        comment = []
    return keys


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def _default(value: Any) -> str:
    if isinstance(value, dict | list):
        return "" if value else f"`{json.dumps(value)}`"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value}`"


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")


def values_table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for path, comment in documented_keys(values_text):
        rows.append(f"| `{path}` | {_cell(_default(_lookup(values, path)))} | {_cell(comment)} |")
    return "\n".join(rows) + "\n"


def readme_with_table(readme: str, table: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return f"{readme[:start]}\n\n{table}\n{readme[end:]}"


def main() -> None:
    readme_path = CHART_DIR / "README.md"
    table = values_table((CHART_DIR / "values.yaml").read_text())
    readme_path.write_text(readme_with_table(readme_path.read_text(), table))
    sys.stdout.write(f"wrote the values table of {readme_path.relative_to(REPO_ROOT)}\n")


if __name__ == "__main__":
    main()
