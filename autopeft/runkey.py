"""One hash of everything that changes a run's result: the run cache's key and the leaderboard's row key.

The key covers the backbone and the identity of its weights, the data, the methods with every
option, the schedule, the split and the seed; settings that do not change the numbers (the
device) are left out. ``row_key`` is the same without the seed: runs that pool into mean +- std.
Benchmarks train through ``autopeft.jobs.train.cached_run``, so a configuration trained before is read
back instead of trained again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from autopeft.backbones import DEMO_BACKBONES
from autopeft.data import BUILTIN_TASKS
from autopeft.errors import ConfigError
from autopeft.runconfig import BackboneConfig, RunConfig

NOT_IN_KEY = {"train": ("device",)}  # run-config fields that never change a run's numbers
# Fields added after keys were first made (dotted paths): they enter the key only away from these
# defaults, so every run cached before a field existed keeps its key (and stays reusable).
LATER_FIELDS = {
    "train.amp": "auto",
    "train.bn": "auto",
    "init": None,
    "data.folds": 1,
    "data.fold": 0,
    "data.fold_seed": 0,
    "data.test_size": None,
}


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


def folder_id(folder: Path) -> str:
    """A sha256 over the names and contents of the files in ``folder`` (a saved adapter)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}".encode())
    return "sha256:" + digest.hexdigest()


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
    if not config.test:  # only a run that reads test keys on its size, so train-split runs are shared across sizes
        del fields["data"]["test_size"]
    for section, names in NOT_IN_KEY.items():
        fields[section] = {k: v for k, v in fields[section].items() if k not in names}
    for path, default in LATER_FIELDS.items():
        *sections, name = path.split(".")
        holder = functools.reduce(dict.__getitem__, sections, fields)
        if holder.get(name, default) == default:
            holder.pop(name, None)
    if config.init is not None:  # a start from saved weights: the key follows their content, not their path
        fields["init"] = folder_id(Path(config.init))
    task = BUILTIN_TASKS.get(config.data.name or "")
    if task is not None and task.version > 1:  # keys made before generators had versions stay valid
        fields["data_version"] = task.version
    return {**fields, "weights": weights_id(config.backbone)}


def config_key(config: RunConfig) -> str:
    """A stable hex key of ``config`` (sha256 of its canonical JSON, 16 hex digits)."""
    return _digest(key_fields(config))


def row_key(config: RunConfig) -> str:
    """``config_key`` without the seed: the key shared by the seeds of one configuration."""
    return _digest({k: v for k, v in key_fields(config).items() if k != "seed"})


def _digest(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def changed_keys(before: Any, after: Any, ignore: tuple[str, ...] = ("device",), path: str = "") -> list[str]:
    """Dotted paths of the leaves that differ between two nested mappings (keys named in ``ignore``,
    settings that never change a result, are skipped)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return [] if before == after else [path or "(whole config)"]
    changed = []
    for key in sorted(set(before) | set(after), key=str):
        if key in ignore:
            continue
        where = f"{path}.{key}" if path else str(key)
        if key not in before or key not in after:
            if not _later_default(where, before.get(key, after.get(key))):
                changed.append(where)
        else:
            changed += changed_keys(before[key], after[key], ignore, where)
    return changed


def _later_default(path: str, value: Any) -> bool:
    """Whether ``path`` is a field added after runs were first made (``LATER_FIELDS``, also where a train section
    sits deeper, as ``supernet.train.bn``) and ``value`` is its default: a config written before the field existed
    and one that has it at its default are the same run."""
    return any(
        value == default and (path == field or ("." in field and path.endswith("." + field)))
        for field, default in LATER_FIELDS.items()
    )


def refuse_changes(before: Any, after: Any, where: Path, again: str) -> None:
    """One line naming every result-changing key a resumed run would change, and how to resume it."""
    changed = changed_keys(before, after)
    if changed:
        raise ConfigError(
            f"--resume: {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from the run {where} "
            f"was started with; nothing was changed. "
            f"Resume it as started with: {again}"
        )
