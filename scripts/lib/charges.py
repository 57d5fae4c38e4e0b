"""The studies' ledger: what one run costs, charged whether it trained now or was read back from the cache.

Images come from the schedule (every epoch's pass over the training split, a val pass per epoch on a run that
selects, the test split once on a run that reads it), never from what a record happened to store; wall time is the
record's where one was measured, else priced at the method's median seconds per image on this machine and flagged
as priced, not measured (a run is never trained again to learn its time).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from autopeft.data import DataConfig, load_task, split_sizes
from autopeft.jobs.rundir import CONFIG, RESULT
from autopeft.records import Compute, RunRecord, read_record
from autopeft.runconfig import BackboneConfig, RunConfig, parse_run_config, read_yaml
from autopeft.train import TrainConfig


@dataclass(frozen=True)
class Charge:
    """One run's bill: its compute, and whether its wall time was priced rather than measured."""

    compute: Compute
    priced: bool = False

    @staticmethod
    def total(charges: Iterable[Charge]) -> Charge:
        charges = list(charges)
        return Charge(Compute.total(c.compute for c in charges), any(c.priced for c in charges))


def scheduled_images(config: RunConfig, test_images: int = 0) -> Compute:
    """The images ``config``'s schedule processes: training (train, or train+val for a final run) each epoch, val
    each epoch unless final, and ``test_images`` once when the run reads test."""
    train, val = split_sizes(config.data)
    epochs = config.train.epochs
    if config.final:
        return Compute(epochs * (train + val), test_images if config.test else 0)
    return Compute(epochs * train, epochs * val + (test_images if config.test else 0))


def charge(
    config: RunConfig, record: RunRecord, seconds_per_image: Mapping[str, float], test_images: int = 0
) -> Charge:
    """``record``'s run of ``config`` charged by its schedule; its wall time as recorded, else priced."""
    images = scheduled_images(config, test_images)
    if record.compute.wall_s > 0:
        return Charge(Compute(images.train_images, images.eval_images, record.compute.wall_s))
    method = next(iter(config.methods))
    priced = round(images.images * seconds_per_image[method], 1)
    return Charge(Compute(images.train_images, images.eval_images, priced), priced=True)


def seconds_per_image(cache: Path, backbone: str, methods: Iterable[str], fallback: float) -> dict[str, float]:
    """Per method, the median measured wall seconds per scheduled image of its completed single-method runs on train
    on ``backbone`` in the cache (as they ran: 1 thread each, 2 jobs on 2 cores here); ``fallback`` for a method the
    cache has none of."""
    seen: dict[str, list[float]] = {}
    for path in cache.glob(f"*/{RESULT}"):
        record = read_record(path)
        if not isinstance(record, RunRecord) or record.backbone != backbone or len(record.methods) != 1:
            continue
        config = parse_run_config(read_yaml(path.parent / CONFIG), str(path.parent))
        if record.status == "completed" and record.compute.wall_s and not config.final:
            images = scheduled_images(config).images
            seen.setdefault(next(iter(record.methods)), []).append(record.compute.wall_s / images)
    return {m: statistics.median(seen[m]) if m in seen else fallback for m in methods}


def images_per_run(task: str, epochs: int) -> tuple[float, float]:
    """Images (``Compute.images``) of a run of ``epochs`` on built-in ``task``: one on train scored on val each
    epoch, and a final one on train+val tested once."""
    config = RunConfig(BackboneConfig(), DataConfig(name=task), {"linear": {}}, TrainConfig(epochs=epochs), test=False)
    test = len(load_task(DataConfig(name=task), 32).split("test"))
    return scheduled_images(config).images, scheduled_images(replace(config, final=True, test=True), test).images
