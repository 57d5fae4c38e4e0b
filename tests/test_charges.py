"""The studies' ledger (scripts/lib/charges.py): every run charged by its schedule, cache hits and records from
before compute was recorded included, wall time measured where recorded and priced (flagged) where not."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from autopeft.data import DataConfig
from autopeft.jobs.train import cached
from autopeft.records import Compute, RunRecord
from autopeft.runconfig import BackboneConfig, RunConfig
from autopeft.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from lib import charges  # noqa: E402

LEDGER = ROOT / "results" / "runs" / "cache"


def run(final: bool = False, **train) -> RunConfig:
    data = DataConfig(name="shapes_orientation")
    return RunConfig(
        BackboneConfig(name="vit_demo_fmnist"),
        data,
        {"lora": {}},
        TrainConfig(epochs=20, **train),
        final=final,
        test=final,
    )


def test_a_run_is_charged_its_schedule():
    assert charges.scheduled_images(run()) == Compute(20 * 800, 20 * 200)
    assert charges.scheduled_images(run(final=True), test_images=1000) == Compute(20 * 1000, 1000)
    assert charges.images_per_run("shapes_orientation", 20) == (20 * 800 + 20 * 200 / 3, 20 * 1000 + 1000 / 3)


def test_a_record_without_compute_is_charged_its_images_and_a_priced_time_flagged_as_such():
    unrecorded = RunRecord("train", "shapes_orientation", {"lora": {}}, 0, "vit_demo_fmnist", 0, 20)
    bill = charges.charge(run(), unrecorded, {"lora": 0.01})
    assert (
        bill.priced
        and bill.compute.train_images == 16000
        and bill.compute.wall_s == pytest.approx(0.01 * (16000 + 4000 / 3), abs=0.1)
    )
    measured = dataclasses.replace(unrecorded, compute=Compute(0, 0, 123.0))
    assert charges.charge(run(), measured, {}) == charges.Charge(Compute(16000, 4000, 123.0))
    assert charges.Charge.total([bill, charges.charge(run(), measured, {})]).priced


def test_c_sweep_is_the_grid_s_run_count_times_one_run_s_images():
    # the committed grid of shapes_orientation (search_vs_sweep's: 5 methods x 3 sizes x 3 lrs), read back
    sys.path.insert(0, str(ROOT / "scripts"))
    from search_vs_sweep import SIZES, run_config

    configs = [
        run_config("shapes_orientation", {m: o}, lr)
        for m, sizes in SIZES.items()
        for o in sizes
        for lr in (0.003, 0.01, 0.03)
    ]
    records = [cached(c, LEDGER) for c in configs]
    assert None not in records and len(configs) == 45
    bills = [charges.charge(c, r, {m: 0.01 for m in SIZES}) for c, r in zip(configs, records, strict=True)]
    total = charges.Charge.total(bills).compute
    assert (total.train_images, total.eval_images) == (45 * 16000, 45 * 4000)
    assert all(b.compute.wall_s > 0 for b in bills)
