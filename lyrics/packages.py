"""Files that installed packages ship (real photos, MiniLM weights, vocabularies), found without
importing the packages: some need modules that only their optional dependencies bring."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "package:"


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, or None when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_location(location: str, relative_to: Path | None, what: str) -> Path:
    """``package:<module>/<folder>`` inside an installed package, else a path relative to
    ``relative_to`` (an absolute location stays absolute)."""
    if location.startswith(PACKAGE_PREFIX):
        module, _, folder = location.removeprefix(PACKAGE_PREFIX).partition("/")
        root = package_dir(module)
        if root is None:
            raise FileNotFoundError(f"{what} {location!r}: package {module!r} is not installed")
        return root / folder
    return (relative_to / location) if relative_to is not None else Path(location)
