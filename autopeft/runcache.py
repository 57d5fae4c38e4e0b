"""A cache of finished training runs keyed by one hash of everything that changes their result.

Benchmarks and scripts train through ``cached_run``: a run whose configuration (backbone and the
identity of its weights, data, methods with every option, schedule, split, seed) was trained
before is read back instead of trained again, so reruns and later benchmarks reuse it. Settings
that do not change the result (the device) are left out of the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from autopeft.backbones import DEMO_BACKBONES
from autopeft.runconfig import BackboneConfig, RunConfig
from autopeft.runs import train_or_reuse

NOT_IN_KEY = {"train": ("device",)}  # run-config fields that never change a run's numbers


def weights_id(backbone: BackboneConfig) -> str:
    """What the backbone's weights are: a sha256 of the file they come from, or how they are made."""
    if not backbone.pretrained:
        return "random init"
    if backbone.checkpoint:
        path = Path(backbone.checkpoint).resolve()
        stat = path.stat()
        return "sha256:" + _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if backbone.name in DEMO_BACKBONES:
        return "sha256:" + DEMO_BACKBONES[backbone.name]["sha256"]
    return f"timm hub: {backbone.name}"


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def key_fields(config: RunConfig) -> dict[str, Any]:
    """The run config as the cache key sees it: every field that changes the result, plus the weights."""
    fields = config.to_dict()
    for section, names in NOT_IN_KEY.items():
        fields[section] = {k: v for k, v in fields[section].items() if k not in names}
    return {**fields, "weights": weights_id(config.backbone)}


def config_key(config: RunConfig) -> str:
    """A stable hex key of ``config`` (sha256 of its canonical JSON, 16 hex digits)."""
    canonical = json.dumps(key_fields(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cached_run(config: RunConfig, root: Path, progress: Any = None) -> dict[str, Any]:
    """result.json of ``config`` trained in ``root/<config_key>``: read back when finished there,
    resumed when interrupted, trained otherwise."""
    return train_or_reuse(config, Path(root) / config_key(config), progress)
