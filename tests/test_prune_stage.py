"""E2VPT pruning as the last step of `autopeft run` and `autopeft select` on a tiny ViT: the fraction chosen on
val by the stated rule, final runs that hold only the kept prompts, the test split read only by the final runs,
resume without redoing finished rewinds, nothing changed while off, and bad prune sections on one line."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from autopeft.jobs import train as training
from autopeft.records import Compute
from autopeft.report import write_report
from autopeft.runconfig import load_run_config
from autopeft.runkey import config_key
from autopeft.search import prune_stage
from autopeft.search.pipeline import parse_pipeline, run_pipeline
from autopeft.search.prune_stage import PruneCandidate, choose_fraction, has_prompts
from autopeft.search.select import parse_suite, run_select
from tests.test_train import TINY

TRAIN = {"epochs": 1, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0}
BACKBONE = {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY}
WIDTH = TINY["embed_dim"]
PRUNE = {"enabled": True, "fractions": [0.25, 0.5], "tolerance": 100.0}  # every rewind passes: the largest wins
CONFIG = {
    "backbone": BACKBONE,
    "data": {"name": "digits"},
    "space": {"methods": {"lora": {"sizes": [0, 2]}, "kv_prompt": {"sizes": [2, 4]}}},
    "supernet": {"train": TRAIN, "cost": None},
    "search": {"evolution": {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1}},
    "retrain": {"top_k": 1, "train": TRAIN, "select_epochs": 1, "seeds": [0]},
    "baselines": [],
}


def candidate(fraction: float, val_loss: float | None, status: str = "completed") -> PruneCandidate:
    return PruneCandidate(fraction, {}, "", 0, None, val_loss, status, "", Compute())


def test_the_rule_takes_the_largest_fraction_within_one_seed_std_else_the_tolerance():
    candidates = [candidate(0.2, 1.01), candidate(0.4, 1.20), candidate(0.6, 1.04), candidate(0.8, None, "failed")]
    assert choose_fraction([1.0], candidates, 0.05) == (0.6, 1.05)  # one seed: the tolerance; not monotone
    fraction, limit = choose_fraction([0.99, 1.01], candidates, 0.05)  # two seeds: their std, 0.0141
    assert fraction == 0.2 and limit == pytest.approx(1.0 + math.sqrt(2e-4))
    assert choose_fraction([1.0], candidates, 0.0) == (None, 1.0)  # none passes: not pruned
    assert choose_fraction([], candidates, 0.05) == (None, None)
    assert not has_prompts({"kv_prompt": {"length": [0, 0]}, "lora": {"rank": 2}})
    assert has_prompts({"vpt": {"length": [0, 3], "mode": "deep"}}) and not has_prompts({"linear": {}})


def run(out: Path, prune: dict | None = None, resume: bool = False):
    config = CONFIG if prune is None else {**CONFIG, "prune": prune}
    return run_pipeline(parse_pipeline(config, "test"), out, resume)


def expected_kept(lengths: list[int], fraction: float) -> list[int]:
    return [n - math.floor(fraction * n) for n in lengths]


def test_run_prunes_the_winner_on_val_and_its_final_runs_hold_only_the_kept_prompts(tmp_path, monkeypatch):
    tested = []  # test-split evaluations, with whether the prune stage had finished by then
    evaluate = training.evaluate
    monkeypatch.setattr(
        training,
        "evaluate",
        lambda *a: tested.append((tmp_path / "on" / "prune_choice.json").is_file()) or evaluate(*a),
    )
    record = run(tmp_path / "on", PRUNE)
    out = tmp_path / "on"
    choice = json.loads((out / "prune_choice.json").read_text())
    assert tested == [True]  # the one final run's test read, after the choice; none during it
    winner = load_run_config(out / "best.yaml").methods["kv_prompt"]["length"]
    winner = winner if isinstance(winner, list) else [winner] * 2
    assert [c["fraction"] for c in choice["candidates"]] == [0.25, 0.5]
    assert choice["fraction"] == 0.5 and choice["seed_std"] is None and choice["tolerance"] == 100.0
    fraction, limit = choose_fraction([choice["val_loss"]], [candidate(**pick(c)) for c in choice["candidates"]], 100)
    assert (fraction, limit) == (choice["fraction"], choice["limit"])
    for c in choice["candidates"]:
        kept = expected_kept(winner, c["fraction"])
        assert c["methods"]["kv_prompt"]["length"] == kept and c["params"] == sum(kept) * WIDTH
        rewind = json.loads((Path(c["run_dir"]) / "result.json").read_text())
        assert rewind["test_acc"] is None and rewind["provenance"]["test_read"] is False
        assert rewind["val_loss"] == c["val_loss"] and rewind["epochs"] == 1  # the source run's schedule
        assert json.loads((Path(c["run_dir"]) / "prune.json").read_text())["split"] == "train"
    final = out / "final" / "searched" / "seed0"
    prompts = {n: t for n, t in load_file(final / "adapter.safetensors").items() if "prompt" in n}
    kept = expected_kept(winner, 0.5)
    assert [t.shape[1] for t in prompts.values()] == kept
    assert sum(t.numel() for t in prompts.values()) == choice["params_after"] == sum(kept) * WIDTH
    assert choice["params_before"] == sum(winner) * WIDTH > choice["params_after"]
    assert load_run_config(final / "config.yaml").init == choice["init"] == str((out / "prune/0.5/pruned").resolve())
    row = record.table[0]
    assert row.params == record.trainable_params == choice["params_after"]
    assert (row.pruning.fraction, row.pruning.params_before) == (0.5, choice["params_before"])
    assert record.compute["prune"].train_images == 2 * (800 + 800)  # per fraction: one scoring pass, one epoch
    assert record.search_cost_s["prune"] == record.compute["prune"].wall_s > 0
    assert "fraction 0.5; trainable" in (out / "summary.md").read_text()
    report = write_report([out], tmp_path / "report")[0].read_text()
    assert f"| searched | digits | token | 0.5 | {choice['params_before']} | {choice['params_after']} |" in report

    off = tmp_path / "off"  # off by default: no prune files, the same selection, final runs as before
    plain = run(off)
    assert "prune" not in yaml.safe_load((off / "config.yaml").read_text())
    assert not (off / "prune_choice.json").exists() and not (off / "prune").exists()
    assert (off / "candidates.csv").read_text() == (out / "candidates.csv").read_text()
    assert (off / "best.yaml").read_text() == (out / "best.yaml").read_text()
    assert set(plain.compute) == {"supernet", "search", "retrain_top_k", "baselines", "final"}
    assert plain.table[0].pruning is None and "prune" not in plain.search_cost_s
    best = replace(load_run_config(off / "best.yaml"), test=True)
    assert json.loads((off / "final/searched/seed0/result.json").read_text())["config_key"] == config_key(best)


def pick(candidate_json: dict) -> dict:
    keep = ("fraction", "val_loss", "status")
    return {k: candidate_json[k] for k in keep}


def test_a_resumed_run_keeps_finished_rewinds_and_never_redoes_a_finished_stage(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(out, PRUNE)
    first = json.loads((out / "result.json").read_text())["table"]
    choice = json.loads((out / "prune_choice.json").read_text())
    pruned, trained = [], []
    prune_run, train_run = prune_stage.prune_run, training.train_run
    monkeypatch.setattr(prune_stage, "prune_run", lambda src, o, *a: pruned.append(o.name) or prune_run(src, o, *a))
    monkeypatch.setattr(training, "train_run", lambda c, o, *a, **k: trained.append(o) or train_run(c, o, *a, **k))
    for name in (
        "prune_choice.json",
        "result.json",
        "summary.md",
    ):  # killed while pruning at 0.5, before the final runs
        (out / name).unlink()
    for path in sorted((out / "prune" / "0.5").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    run(out, PRUNE, resume=True)
    assert pruned == ["0.5"] and trained == [out / "prune" / "0.5"]  # 0.25's rewind and the final run reused
    assert untimed(json.loads((out / "prune_choice.json").read_text())) == untimed(choice)
    assert untimed(json.loads((out / "result.json").read_text())["table"]) == untimed(first)
    pruned.clear()
    (out / "result.json").unlink()  # killed after the prune stage: it is read back, nothing is redone
    (out / "prune_choice.json").rename(out / "prune.json")  # as a run directory written before the rename has it
    run(out, PRUNE, resume=True)
    assert pruned == [] and trained == [out / "prune" / "0.5"]
    table = json.loads((out / "result.json").read_text())["table"]
    assert table[0]["pruning"]["record"] == str(out / "prune.json")  # the old file was read, not replaced
    table[0]["pruning"]["record"] = first[0]["pruning"]["record"]
    assert untimed(table) == untimed(first) and not (out / "prune_choice.json").exists()


def untimed(data):
    """``data`` without its wall times, which differ between any two runs."""
    if isinstance(data, dict):
        return {k: untimed(v) for k, v in data.items() if k not in ("wall_s", "run_s")}
    return [untimed(v) for v in data] if isinstance(data, list) else data


def test_select_prunes_the_chosen_strategy_before_its_final_runs(tmp_path):
    suite = {
        "backbone": BACKBONE,
        "datasets": ["digits"],
        "strategies": ["kv_prompt"],
        "sweep": {"trials": 1, "pruner": "none", "train": TRAIN},
        "finalists": 1,
        "final": {"train": TRAIN, "seeds": [0, 1, 2]},
        "prune": {**PRUNE, "fractions": [0.5], "level": "segment", "segments": 4},  # the sweep may pick length 1
    }
    out = tmp_path / "out"
    record = run_select(parse_suite(suite, "suite"), out)
    folder = out / "digits"
    choice = json.loads((folder / "prune_choice.json").read_text())
    unpruned = json.loads((folder / "prune" / "unpruned" / "result.json").read_text())
    assert choice["source"] == str(folder / "prune" / "unpruned") and unpruned["test_acc"] is None
    assert choice["fraction"] == 0.5 and choice["params_before"] == unpruned["trainable_params"]
    selected = record.datasets[0]
    assert selected.pruning.fraction == 0.5 and selected.trainable_params == choice["params_after"]
    assert selected.compute["prune"].train_images == unpruned["compute"]["train_images"] + 800 + 800
    for seed in (0, 1, 2):
        final = folder / "final" / "kv_prompt" / f"seed{seed}"
        prompts = [t for n, t in load_file(final / "adapter.safetensors").items() if "prompt" in n]
        assert sum(t.numel() for t in prompts) == choice["params_after"] < choice["params_before"]
    assert "kv_prompt: E2VPT pruning (segment level)" in (out / "summary.md").read_text()


BAD = [
    ({"fractions": [0.5, 1.0]}, "prune.fractions[1]: got 1.0; allowed: a number with 0 < fraction < 1"),
    (
        {"fractions": []},
        "prune.fractions: got []; allowed: a non-empty list of distinct numbers, each with 0 < fraction < 1",
    ),
    ({"level": "tokens"}, "prune.level: got 'tokens'; allowed: 'token' or 'segment' or 'both'"),
    ({"tolerance": -0.1}, "prune.tolerance: got -0.1; allowed: a number >= 0"),
    (
        {"enabled": True, "level": "segment", "segments": 5},
        "prune.segments: got 5; allowed: a positive integer dividing the prompt width 32 (kv_prompt block 0)",
    ),
]


@pytest.mark.parametrize(("prune", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_prune_sections_fail_on_one_line_before_anything_is_written(prune, message, tmp_path, run_cli):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "prune": prune}))
    code, stderr = run_cli("run", str(config), "--out", str(tmp_path / "never"))
    assert code == 2 and stderr.endswith(f": {message}\n") and len(stderr.splitlines()) == 1  # segments: no file
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"backbone": BACKBONE, "strategies": ["kv_prompt"], "prune": prune}))
    code, stderr = run_cli("select", str(suite), "--out", str(tmp_path / "never"))
    assert code == 2 and stderr == f"autopeft: error: {suite}: {message}\n"
    assert not (tmp_path / "never").exists()


def test_pruning_belongs_to_run_and_to_the_suite(tmp_path, run_cli):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "prune": PRUNE}))
    code, stderr = run_cli("search", str(config), "--engine", "supernet", "--out", str(tmp_path / "never"))
    assert code == 2 and stderr.startswith("autopeft: error: prune.enabled: got true; allowed: false here")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"backbone": BACKBONE, "supernet": {"prune": PRUNE}}))
    code, stderr = run_cli("select", str(suite), "--out", str(tmp_path / "never"))
    assert code == 2 and "supernet.prune: set by select" in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "never").exists()
