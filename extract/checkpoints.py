"""Where a frozen model's weights come from, and its fingerprint for the cache manifest.

Every component is described by a ``ComponentSpec``: its architecture JSON (``extract/configs/``),
its checkpoint in the real upstream format, and whether a missing checkpoint may be created with
random weights (the ``tiny`` profile). A created checkpoint is written once, atomically, and then
loaded back through the same loading code a real checkpoint goes through.

A fingerprint always describes the weights: it hashes the checkpoint's content, created or real.
A created checkpoint records its seed beside it (``<name>.seed``), and a profile with another
seed refuses it instead of silently reusing it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyrics.config import ConfigError, PipelinesConfig

# Environment variable that overrides each component's checkpoint path in the paper profile.
CHECKPOINT_ENV = {
    "clip": "LYRICS_CLIP_PATH",
    "ram": "LYRICS_RAM_PATH",
    "gdino": "LYRICS_GDINO_PATH",
    "sam": "LYRICS_SAM_PATH",
    "qformer": "LYRICS_QFORMER_PATH",
    "llm": "LYRICS_LLM_PATH",
}


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # clip, ram, gdino, sam, qformer, llm
    arch_path: Path
    checkpoint: Path
    random_init: bool
    seed: int

    @property
    def arch(self) -> dict[str, Any]:
        try:
            return json.loads(self.arch_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.arch_path}: architecture file of {self.name} not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.arch_path}: not valid JSON ({e})") from e

    @property
    def seed_file(self) -> Path:
        return self.checkpoint.with_name(self.checkpoint.name + ".seed")

    def fingerprint(self) -> str:
        """``sha256:<checkpoint content>/arch:<hash>``; the checkpoint must exist (a created one included).

        The architecture file is part of it because it also holds preprocessing settings that
        change the features (input sizes, normalization) without touching the weights.
        """
        self.check_available()
        if not self.checkpoint.exists():
            raise FileNotFoundError(f"{self.checkpoint}: {self.name} checkpoint not created yet, so it has no fingerprint")
        arch_hash = hashlib.sha256(json.dumps(self.arch, sort_keys=True).encode()).hexdigest()[:16]
        return f"{content_hash(self.checkpoint)}/arch:{arch_hash}"

    def check_available(self) -> None:
        """Refuse a missing real checkpoint (the tiny profile creates its own) and a created one of another seed."""
        if not self.random_init and not self.checkpoint.exists():
            env = CHECKPOINT_ENV.get(self.name)
            hint = f" (set {env} to its location)" if env else ""
            raise FileNotFoundError(f"{self.checkpoint}: {self.name} checkpoint not found{hint}")
        if self.random_init and self.checkpoint.exists() and self.seed_file.is_file():
            made_with = self.seed_file.read_text().strip()
            if made_with != str(self.seed):
                raise ConfigError(
                    f"{self.checkpoint}: {self.name} checkpoint was made with random seed {made_with}, but the profile's seed is "
                    f"{self.seed}; delete it (and {self.seed_file.name}) to recreate it, or give the profile another checkpoint path"
                )

    def ensure_checkpoint(self, create: Callable[[Path], None], random: bool = True) -> Path:
        """The checkpoint path, creating it with ``create(tmp_path)`` first when allowed and missing;
        ``random``: its weights come from the seed, which is recorded beside it (a conversion's do not)."""
        self.check_available()
        if self.checkpoint.exists():
            return self.checkpoint
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_name(f".{self.checkpoint.name}.{os.getpid()}.tmp")
        try:
            create(tmp)
            if random:
                self.seed_file.write_text(f"{self.seed}\n")  # before the checkpoint appears: never a checkpoint without its seed
            os.replace(tmp, self.checkpoint)  # a folder or a file appears whole or not at all
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
        return self.checkpoint


def component_spec(config: PipelinesConfig, profile_name: str, name: str) -> ComponentSpec:
    profile = config.profile(profile_name)
    component = getattr(profile, name)
    return ComponentSpec(
        name=name,
        arch_path=config.path(component.arch),
        checkpoint=config.path(component.checkpoint),
        random_init=profile.random_init,
        seed=profile.seed,
    )


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted).

    Memoised per process on (path, size, mtime): a multi-GB checkpoint is read once, however
    many callers (the manifest, each loaded wrapper) ask for its fingerprint.
    """
    stat = path.stat()
    return _content_hash(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _content_hash(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()[:32]}"
