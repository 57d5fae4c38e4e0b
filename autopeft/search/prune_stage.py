"""E2VPT pruning as the last step of `autopeft run` and `autopeft select`, its fraction chosen on val by a rule
fixed in advance (``choose_fraction``).

The train-split run of the chosen subnet (`run`) or strategy (`select`) is pruned at every fraction of
``prune.fractions``, importance from mask gradients over the train split (``autopeft.prune_run``); each pruned
model is rewound, retrained once with the run's own learning rate, weight decay and schedule from the pruned
weights, on train and scored on val. ``choose_fraction`` picks the fraction; the final runs on train+val then
start from that fraction's pruned adapter (the run config's ``init``, which the run key follows). The test split
is never read before the final runs.

    out/
      prune_choice.json   the rule, every candidate and the choice (``PruneChoice``), written last
      prune/<fraction>/   ``autopeft prune``'s directory (pruned/, prune.json), then the rewinding run in it
      prune/unpruned/     select only: the chosen strategy trained once on train with its selection schedule
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from autopeft.api import apply
from autopeft.build import build_backbone
from autopeft.config import given, option, parse_options
from autopeft.errors import ConfigError
from autopeft.files import write_json
from autopeft.jobs.train import read_run, train_or_reuse
from autopeft.methods.prompts import prompt_wrappers
from autopeft.progress import StageProgress
from autopeft.pruning import PRUNABLE, Level, check_fraction, check_segments, prune_run, read_prune_run
from autopeft.records import Compute, Pruning, SeedStats, Status
from autopeft.runconfig import BackboneConfig, load_run_config
from autopeft.selection import without_default_selection

CHOICE = "prune_choice.json"
OLD_CHOICE = "prune.json"  # the name it had before, shared with ``autopeft prune``'s record of one pruning
FOLDER = "prune"
UNPRUNED = "unpruned"  # select's reference run, in out/prune/
RULE = (
    "the largest fraction whose rewound val loss is at most the unpruned prompts' val loss (mean over the run's "
    "seeds) plus one seed std of it, or plus prune.tolerance when the run has a single seed; none: not pruned"
)


@dataclass
class PruneStage:
    """The ``prune`` section of `autopeft run` and `autopeft select` (off by default); ``level`` and ``segments``
    as in ``autopeft.prune``."""

    enabled: bool = option(
        False,
        help="true: the chosen subnet's (run) or strategy's (select) vpt and kv_prompt prompts are pruned at each "
        "of fractions, and the fraction chosen on val starts its final runs; a choice without prompts is skipped.",
    )
    fractions: list[float] = option(
        factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="The candidate shares of each layer's prompt tokens (or segments) to remove, each pruned model "
        "rewound on train and scored on val; a non-empty list of distinct numbers, each with 0 < fraction < 1.",
    )
    level: Level = option(
        "token",
        help="What is removed: token (whole prompt tokens), segment (equal parts of each token, see segments) or "
        "both (tokens, then segments of the kept tokens).",
    )
    segments: int = option(
        8,
        help="segment and both levels: the equal parts each prompt token is cut into; it must divide the width of "
        "every prompt tensor (checked before the run); unused at level token.",
    )
    tolerance: float = option(
        0.02,
        help="How far a pruned model's val loss (mean cross-entropy) may rise above the unpruned run's and the "
        "fraction still qualify, when that run has a single seed (with two or more, their std of the val loss is "
        "used instead); a number >= 0. The default lies between the median seed std of val loss over 61 subnets "
        "trained standalone with 2 seeds in results/ranking.md's runs: 0.013 on digits, 0.052 on mnist5k.",
    )

    def __post_init__(self) -> None:
        if not self.fractions or len(set(self.fractions)) != len(self.fractions):
            raise ConfigError(
                f"prune.fractions: got {self.fractions}; allowed: a non-empty list of distinct numbers, each with "
                f"0 < fraction < 1"
            )
        for i, fraction in enumerate(self.fractions):
            check_fraction(fraction, f"prune.fractions[{i}]")
        if self.tolerance < 0:
            raise ConfigError(f"prune.tolerance: got {self.tolerance}; allowed: a number >= 0")


@dataclass(frozen=True)
class PruneCandidate:
    """One fraction: the pruned methods (kept lengths) and adapter (``init``), and its rewinding run on train,
    scored on val; ``compute``: the pruning passes and the rewinding run."""

    fraction: float
    methods: dict[str, dict[str, Any]]
    init: str
    params: int
    val_acc: float | None
    val_loss: float | None
    status: Status
    run_dir: str
    compute: Compute = field(default_factory=Compute)


@dataclass(frozen=True)
class PruneChoice:
    """``prune_choice.json``: the rule, the unpruned train-split run it was applied to (``source``: its val loss and
    accuracy, its seed std when it has several seeds), the tolerance and loss limit used, every candidate, the
    chosen fraction (None: not pruned) with the methods and adapter the final runs start from, and what the
    stage processed (select's unpruned run included). Importance and rewinding read train, scores val; the
    test split is never read."""

    rule: str
    source: str
    level: Level
    segments: int
    params_before: int
    val_loss: float | None
    val_acc: float | None
    seed_std: float | None
    tolerance: float
    limit: float | None
    candidates: list[PruneCandidate]
    fraction: float | None
    methods: dict[str, dict[str, Any]]
    init: str | None
    params_after: int
    compute: Compute = field(default_factory=Compute)
    test_read: bool = False

    def summary(self, record: Path) -> Pruning:
        """The choice as a final row carries it (``record``: where this prune_choice.json is)."""
        return Pruning(self.level, self.fraction, self.params_before, self.params_after, str(record), self.compute)


def choose_fraction(
    unpruned: Sequence[float], candidates: Sequence[PruneCandidate], tolerance: float
) -> tuple[float | None, float | None]:
    """The rule that chooses the fraction, fixed before any candidate is scored (``RULE``, written to
    prune_choice.json): with ``m`` the mean val loss of the unpruned prompts over the run's seeds (``unpruned``) and
    ``s`` its seed std, or ``tolerance`` when the run has a single seed, choose the largest fraction whose
    rewound val loss is at most ``m + s``; a failed rewind never qualifies, and when no fraction does, the
    prompts are not pruned (None). Returns the fraction and the limit ``m + s`` (None without an unpruned loss)."""
    stats = SeedStats.of(unpruned)
    if stats.mean is None:
        return None, None
    limit = stats.mean + (tolerance if stats.std is None else stats.std)
    passing = [
        c.fraction for c in candidates if c.status == "completed" and c.val_loss is not None and c.val_loss <= limit
    ]
    return max(passing, default=None), limit


def has_prompts(methods: dict[str, dict[str, Any]]) -> bool:
    """Whether ``methods`` hold vpt or kv_prompt tokens (a length above 0 in some block)."""
    lengths = [methods[m]["length"] for m in PRUNABLE if m in methods]
    return any(max(n) if isinstance(n, list) else n for n in lengths)


def prunes(stage: PruneStage, methods: dict[str, dict[str, Any]], what: str, progress: StageProgress) -> bool:
    """Whether the stage prunes ``methods`` (``what``: whose they are): on, and they have prompts; a subnet
    without prompts is skipped with one line."""
    if not stage.enabled:
        return False
    if not has_prompts(methods):
        progress.say(f"prune: {what} has no vpt or kv_prompt prompts; skipped")
        return False
    return True


def check_stage(stage: PruneStage, backbone: BackboneConfig, methods: dict[str, dict[str, Any]]) -> None:
    """One line naming ``prune.segments`` unless it divides the width of every prompt tensor that ``methods``
    (their vpt and kv_prompt, with these options) would have on the backbone, when the stage prunes segments:
    the library's check, on the meta device, before anything is written."""
    prompts = {m: options for m, options in methods.items() if m in PRUNABLE}
    if not stage.enabled or stage.level == "token" or not prompts:
        return
    with torch.device("meta"):
        model = apply(build_backbone(replace(backbone, pretrained=False, checkpoint=None)), prompts)
    check_segments([m for m in prompt_wrappers(model) if m.method in PRUNABLE], stage.segments, "prune.segments")


def choose_pruning(
    source: Path, stage: PruneStage, out: Path, progress: StageProgress, spent: Compute | None = None
) -> PruneChoice:
    """Prune the finished train-split run ``source`` at every fraction of ``stage``, rewind each on train and
    score it on val in ``out/prune/<fraction>``, choose by ``choose_fraction``; write ``out/prune_choice.json`` and
    return it. ``spent``: what was run for the stage before (select's unpruned run), counted in its compute.
    A stage finished before is read back; an interrupted one keeps its finished rewinds and resumes the rest."""
    if choice_file(out).is_file():
        return read_choice(choice_file(out))
    unpruned = read_run(source)
    shown = ", ".join(f"{f:g}" for f in stage.fractions)
    progress.say(
        f"prune: {stage.level} level at {shown} of the prompts of {source}, each rewound on train and scored on val"
    )
    candidates = [_candidate(source, f, stage, out / FOLDER / f"{f:g}", progress) for f in stage.fractions]
    fraction, limit = choose_fraction([unpruned.val_loss], candidates, stage.tolerance)
    chosen = next((c for c in candidates if c.fraction == fraction), None)
    std = SeedStats.of([unpruned.val_loss]).std
    choice = PruneChoice(
        rule=RULE,
        source=str(source),
        level=stage.level,
        segments=stage.segments,
        params_before=unpruned.trainable_params,
        val_loss=unpruned.val_loss,
        val_acc=unpruned.val_acc,
        seed_std=std,
        tolerance=stage.tolerance if std is None else std,
        limit=limit,
        candidates=candidates,
        fraction=fraction,
        methods=unpruned.methods if chosen is None else chosen.methods,
        init=None if chosen is None else chosen.init,
        params_after=unpruned.trainable_params if chosen is None else chosen.params,
        compute=Compute.total([spent or Compute(), *(c.compute for c in candidates)]),
    )
    write_json(out / CHOICE, asdict(choice))
    kept = "not pruned" if fraction is None else f"fraction {fraction:g}"
    progress.say(
        f"prune: {kept} (val loss limit {limit:.4f}); trainable {choice.params_before:,} -> {choice.params_after:,}"
    )
    return choice


def _candidate(source: Path, fraction: float, stage: PruneStage, out: Path, progress: StageProgress) -> PruneCandidate:
    """``source`` pruned at ``fraction`` into ``out`` and rewound there: a finished pruning is kept (its
    config.yaml is written last), an unfinished one starts afresh; the rewind is reused or resumed."""
    if not (out / "config.yaml").is_file():
        shutil.rmtree(out, ignore_errors=True)
        prune_run(source, out, fraction, stage.level, stage.segments)
    rewind = load_run_config(out / "config.yaml")
    run = train_or_reuse(rewind, out, progress.run(f"prune/{out.name}"))
    return PruneCandidate(
        fraction=fraction,
        methods=rewind.methods,
        init=str(rewind.init),
        params=run.trainable_params,
        val_acc=run.val_acc,
        val_loss=run.val_loss,
        status=run.status,
        run_dir=str(out),
        compute=read_prune_run(out).compute + run.compute,
    )


def choice_file(folder: Path) -> Path:
    """Where ``folder``'s pruning choice is: ``prune_choice.json``, or ``prune.json`` in a folder written before
    the rename (the name ``autopeft prune``'s own record keeps)."""
    old = folder / OLD_CHOICE
    return old if old.is_file() and not (folder / CHOICE).is_file() else folder / CHOICE


def read_choice(path: Path) -> PruneChoice:
    """A pruning choice written by ``choose_pruning``."""
    return parse_options(PruneChoice, json.loads(path.read_text()), str(path))


def claimed(config: Any) -> dict[str, Any]:
    """``asdict`` of a pipeline or suite config as its run directory keeps it: ``prune`` only when on and
    ``selection`` only away from its default, so a run claimed before either existed resumes as it was."""
    data = given(asdict(config))  # a suite's overrides: as written
    if not config.prune.enabled:
        del data["prune"]
    return without_default_selection(data)
