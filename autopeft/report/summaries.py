"""The Markdown a run directory's summary.md holds, and the lines commands print: the pipeline's comparison
table, a suite's selection summary, a choice with its tied set, a pruning."""

from __future__ import annotations

from autopeft.choice import Choice, choice_table
from autopeft.methods import describe_methods
from autopeft.records import Evidence, PipelineRecord, Pruning, SelectionRecord, SelectionSummary
from autopeft.search.suite_records import DatasetSelection


def pruning_line(pruning: Pruning) -> str:
    """What pruning did to a row: the fraction chosen on val and the trainable parameters before and after."""
    chosen = "no fraction passed the rule: not pruned" if pruning.fraction is None else f"fraction {pruning.fraction:g}"
    return (
        f"E2VPT pruning ({pruning.level} level), chosen on val by the rule in {pruning.record}: {chosen}; trainable "
        f"{pruning.params_before:,} -> {pruning.params_after:,}; the final runs start from the pruned adapter."
    )


SCORINGS = {"inherited": "with the supernet's shared head", "refit": "with a linear head refit per candidate"}


def render_table(record: PipelineRecord) -> str:
    """The comparison table: the searched subnet vs each baseline (params, val, test mean +- std),
    with what each stage processed."""
    seeds, select = len(record.seeds), record.select_epochs
    lines = [
        f"# autopeft run: {record.dataset} on {record.backbone}",
        "",
        f"val: trained on train for {select} epoch{'s' if select > 1 else ''} (the selection schedule), scored on "
        f"val. test: retrained on train+val for {record.epochs} epochs, final epoch, mean +- std over {seeds} "
        f"seed{'s' if seeds > 1 else ''}. params: trainable, classifier head excluded"
        + (f"; budget {record.budget:,}." if record.budget is not None else "; no parameter budget."),
        "",
        "| strategy | params | val % | test % |",
        "|---|---:|---:|---:|",
    ]
    for row in record.table:
        test = f"{row.test_acc:.2f} +- {row.test_acc_std or 0.0:.2f}" if row.test_acc is not None else "failed"
        test = test if row.seeds_run else "not run (not best on val)"
        val = "-" if row.val_acc is None else f"{row.val_acc:.2f}"
        lines.append(f"| {row.name} | {row.params:,} | {val} | {test} |")
    cost, compute = record.search_cost_s, record.compute
    ratio = "n/a" if record.search_cost_ratio is None else f"{record.search_cost_ratio:.1f}x"
    pruning = "" if "prune" not in cost else f" + prune {cost['prune']:.0f} s"
    lines += [
        "",
        f"Searched subnet: {describe_methods(record.methods)}.",
        f"{record.candidates} candidates scored by val loss on the supernet's features, "
        f"{SCORINGS[record.scoring]}; the top {record.retrained} trained standalone and chosen on val. (How well "
        "this ranks subnets like standalone training is measured over random panels of subnets in autopeft's "
        "results/ranking.md.)",
        *([pruning_line(record.table[0].pruning)] if record.table[0].pruning else []),
        *(["", *selection_lines(record.selection), ""] if record.selection else []),
        f"Search cost: supernet {cost['supernet']:.0f} s + search {cost['search']:.0f} s + top-{record.retrained} "
        f"selection runs {cost['retrain_top_k']:.0f} s{pruning} = {ratio} one final training run of the searched "
        f"subnet ({record.table[0].run_s or 0:.0f} s). Wall time {(record.wall_time_s or 0) / 60:.1f} min.",
        "Images processed (training passes + forward-only evaluation): "
        + ", ".join(f"{stage} {c.train_images:,} + {c.eval_images:,}" for stage, c in compute.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def render_summary(record: SelectionRecord, selections: list[DatasetSelection]) -> str:
    """The per-dataset choice table, then each dataset's strategies with their val scores and compute."""
    seeds = len(selections[0].choice.seeds) if selections else 0
    budget = "none" if record.budget is None else f"{record.budget:,}"
    lines = [
        f"# autopeft select on {record.backbone}",
        "",
        f"Strategies ranked on val (accuracy, ties by val loss); the chosen one is the finalist best on val. "
        f"test: retrained on train+val, final epoch, mean +- std over {seeds} seeds. params: trainable, "
        f"head excluded. Budget: {budget}. Engine: {record.engine}. Compute: images processed by the "
        "strategy's selection (forward+backward training images + forward-only evaluation images / 3).",
        "",
        "| dataset | chosen | methods | params | val % | test % |",
        "|---|---|---|---:|---:|---:|",
    ]
    for choice in record.datasets:
        test = test_cell(choice.test_acc, choice.test_acc_std)
        lines.append(
            f"| {choice.dataset} | {choice.chosen} | {describe_methods(choice.methods)} | "
            f"{choice.trainable_params:,} | {percent(choice.val_acc)} | {test} |"
        )
    for s in selections:
        finals = {f.row.name: f.row for f in s.finalists}
        pruning = s.choice.row.pruning
        lines += [
            "",
            f"## {s.dataset}",
            "",
            *([f"{s.chosen}: {pruning_line(pruning)}", ""] if pruning else []),
            *([*selection_lines(s.selection), ""] if s.selection else []),
            "| strategy | params | val % | test % | compute (images) | wall s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for o in s.strategies:
            if o.status != "completed":
                lines.append(f"| {o.name} | - | - | {o.status}: {o.reason} | - | - |")
                continue
            row = finals.get(o.name)
            test = test_cell(row.test_acc, row.test_acc_std) if row else "not a finalist"
            lines.append(
                f"| {o.name} | {o.trainable_params:,} | {percent(o.val_acc)} | {test} | {o.compute.images:,.0f} | "
                f"{o.wall_time_s:.0f} |"
            )
    lines += ["", f"Wall time {(record.wall_time_s or 0) / 60:.1f} min.", ""]
    return "\n".join(lines)


def percent(value: float | None, unit: str = "") -> str:
    """An accuracy with two decimals (and ``unit``), or - when there is none."""
    return "-" if value is None else f"{value:.2f}{unit}"


def test_cell(mean: float | None, std: float | None) -> str:
    """A test accuracy with its spread over seeds, or failed."""
    return "failed" if mean is None else f"{mean:.2f} +- {std or 0.0:.2f}"


def selection_lines(summary: SelectionSummary) -> list[str]:
    """A summary's markdown: how candidates were scored, the choice with each interval, the race, the cost."""
    choice = Choice.from_dict(summary.choice)
    evidence = {name: Evidence.from_json(e) for name, e in summary.evidence.items() if e is not None}
    how = "the holdout val split" if summary.mode == "holdout" else f"{summary.folds} folds of train+val"
    seeds = f", {summary.seeds} seeds each" if summary.seeds > 1 else ""
    lines = [
        f"Selection: scored on {how}{seeds}" + (", raced" if summary.race else "") + f" (prefer {summary.prefer}).",
        "",
    ]
    lines += choice_table(choice, evidence)
    for r in summary.rounds if summary.race else []:
        dropped = "; ".join(f"{name} {why}" for name, why in r.dropped.items()) or "none"
        lines.append(f"Race, fold {r.fold}: {r.scored} scored ({r.compute.wall_s:.0f} s), dropped: {dropped}.")
    c = summary.compute
    if c.train_images or c.eval_images:  # none when the candidates' own runs were compared, as they were scored
        lines.append(
            f"Selection compute: {c.train_images:,} training + {c.eval_images:,} evaluation images, {c.wall_s:.0f} s."
        )
    if summary.versus_lora:
        lines.append(summary.versus_lora[0].upper() + summary.versus_lora[1:] + ".")
    return lines
