"""The repository's pipelines.yaml, rewritten for a test: its artifact root in a temporary folder."""

from collections.abc import Callable
from pathlib import Path

import yaml

from lyrics.config import DEFAULT_CONFIG, REPO_ROOT


def write_test_config(root: Path, edit: Callable[[dict], None] | None = None, name: str = "pipelines.yaml") -> Path:
    """`root` as the artifact root, the architecture files still the repository's (the file moves),
    then `edit` applied to the raw document; returns the file written in `root`."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["root"] = str(root)
    for component in raw["profiles"]["tiny"].values():
        if isinstance(component, dict):
            component["arch"] = str(REPO_ROOT / component["arch"])
    if edit:
        edit(raw)
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return path
