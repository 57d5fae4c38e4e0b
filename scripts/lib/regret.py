"""The selection-regret study's arithmetic, apart from its runs: the cross-fitted replicates of an oracle table, the
rules (the library's own selection code, fed the table's val outcomes), regret against the oracle, and the
bootstrap over tasks, replicates and test images. Pure: no training, no files.

A task's table holds, per pool member and fold k, the val outcomes of the member trained without fold k and that
model's outcomes on the test set. Replicate r holds fold r out: a rule sees folds r+1, r+2, ... (mod K), its choice
is scored by the chosen member's fold-r model on test, and the oracle is the member with the best mean test
accuracy over the other folds' models, scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from autopeft.records import Compute, Outcomes
from autopeft.selection import SelectionConfig, score_candidates


@dataclass(frozen=True)
class Table:
    """One task's oracle table: members (names, trainable parameters, method family), per member and fold the
    val outcomes and the fold run's compute, and ``test`` (members, folds, images) 0/1."""

    task: str
    members: tuple[str, ...]
    params: tuple[int, ...]
    families: tuple[str, ...]
    val: tuple[tuple[Outcomes, ...], ...]
    cost: tuple[tuple[Compute, ...], ...]
    test: np.ndarray

    @property
    def folds(self) -> int:
        return self.test.shape[1]

    def seen(self, replicate: int) -> list[int]:
        """The folds a rule sees in replicate ``replicate``, in the order it sees them."""
        return [(replicate + k) % self.folds for k in range(1, self.folds)]


@dataclass(frozen=True)
class Pick:
    """A rule's choice in one replicate: the member, what reading its evidence cost, and the tied set (if any)."""

    member: int
    compute: Compute
    tied: tuple[int, ...] = ()


Rule = Callable[[Table, int], Pick]


def library_rule(config: SelectionConfig) -> Rule:
    """The library's selection (``autopeft.selection.score_candidates``, racing included) run on the folds a
    replicate sees: round k reads fold ``seen(r)[k]`` of every member still in the race."""

    def rule(table: Table, replicate: int) -> Pick:
        order = table.seen(replicate)

        def run(name: str, round_: int) -> tuple[list[Outcomes], Compute]:
            m = table.members.index(name)
            return [table.val[m][order[round_]]], table.cost[m][order[round_]]

        params = dict(zip(table.members, table.params, strict=True))
        selected = score_candidates(list(table.members), run, config, params)
        compute = Compute.total(r.compute for r in selected.rounds)
        tied = tuple(table.members.index(name) for name in selected.choice.tied)
        return Pick(table.members.index(selected.choice.winner), compute, tied)

    return rule


def fixed_rule(name: str, charged: int) -> Rule:
    """Always member ``name``, charged ``charged`` of its fold runs (the runs that tuned it)."""

    def rule(table: Table, replicate: int) -> Pick:
        m = table.members.index(name)
        return Pick(m, Compute.total([table.cost[m][table.seen(replicate)[0]]] * charged))

    return rule


def holdout_within(table: Table, replicate: int, family: str) -> int:
    """The holdout choice among one method family's members."""
    inside = [m for m, f in enumerate(table.families) if f == family]
    first = table.seen(replicate)[0]
    return max(inside, key=lambda m: (table.val[m][first].correct.mean(), -_loss(table.val[m][first]), -m))


def best_fixed_family(tables: Sequence[Table], task: int, replicate: int, families: Sequence[str]) -> str:
    """Leave-one-task-out: the family whose holdout choice has the best mean k-fold val accuracy on the other
    tasks (never reading task ``task``)."""

    def mean_kfold(family: str) -> float:
        scores = []
        for t, table in enumerate(tables):
            if t != task:
                m = holdout_within(table, replicate, family)
                scores.append(np.mean([table.val[m][f].correct.mean() for f in table.seen(replicate)]))
        return float(np.mean(scores))

    return max(families, key=lambda family: (mean_kfold(family), -list(families).index(family)))


def _loss(outcomes: Outcomes) -> float:
    return float(outcomes.loss.mean()) if outcomes.loss is not None else float("inf")


def test_accuracy(test: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample, member and fold, the test accuracy (%) with images weighted (``weights``: resamples x images,
    each row summing to 1)."""
    members, folds, images = test.shape
    flat = test.reshape(members * folds, images).astype(np.float64)
    return 100 * (weights @ flat.T).reshape(len(weights), members, folds)


def oracle(accuracy: np.ndarray, replicate: int) -> np.ndarray:
    """Per resample, the member with the best mean test accuracy over the folds other than ``replicate``."""
    others = [f for f in range(accuracy.shape[-1]) if f != replicate]
    return accuracy[..., others].mean(axis=-1).argmax(axis=-1)


def regrets(accuracy: np.ndarray, picks: Sequence[int]) -> np.ndarray:
    """Per resample and replicate: the oracle's fold-r test accuracy minus the pick's."""
    resamples = np.arange(accuracy.shape[0])
    columns = []
    for r, pick in enumerate(picks):
        best = oracle(accuracy, r)
        columns.append(accuracy[resamples, best, r] - accuracy[:, pick, r])
    return np.stack(columns, axis=1)


def image_weights(images: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Row 0: every image once (the point estimate); then ``resamples`` bootstrap draws of the test images."""
    draws = rng.multinomial(images, np.full(images, 1 / images), size=resamples) / images
    return np.vstack([np.full(images, 1 / images), draws])


def suite_means(per_task: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Suite means (mean over tasks of the mean over replicates) per resample of ``per_task`` (each resamples+1 x
    replicates, row 0 the point estimate): row 0 as measured, then tasks and replicates resampled too."""
    stacked = np.stack(per_task)  # tasks, resamples + 1, replicates
    tasks, rows, replicates = stacked.shape
    point = stacked[:, 0].mean()
    pick_tasks = rng.integers(0, tasks, size=(rows - 1, tasks))
    pick_reps = rng.integers(0, replicates, size=(rows - 1, tasks, replicates))
    b = np.arange(1, rows)[:, None, None]
    drawn = stacked[pick_tasks[:, :, None], b, pick_reps]
    return np.concatenate([[point], drawn.mean(axis=(1, 2))])


FOLD_RULES = {  # the library's selection modes on the four folds a replicate sees
    "holdout": SelectionConfig(),
    "k-fold (choose, prefer best)": SelectionConfig(mode="kfold", folds=4),
    "raced k-fold": SelectionConfig(mode="kfold", folds=4, race=True),
    "k-fold tied set, prefer fewest_params": SelectionConfig(mode="kfold", folds=4, prefer="fewest_params"),
}
BASELINE, RACE, KFOLD = "holdout", "raced k-fold", "k-fold (choose, prefer best)"
FIXED = "best fixed method (leave one task out)"


@dataclass(frozen=True)
class Estimate:
    """A suite figure: the measured value and its 95% percentile bootstrap interval."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, rows: np.ndarray, alpha: float = 0.05) -> Estimate:
        low, high = np.quantile(rows[1:], [alpha / 2, 1 - alpha / 2])
        return cls(float(rows[0]), float(low), float(high))

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class RuleResult:
    """One rule over the suite: regret per task and over the suite, the paired difference to holdout, compute per
    task (mean over replicates) and the share of the oracle's headroom over the best fixed method it captures."""

    name: str
    regret: dict[str, Estimate]
    suite: Estimate
    versus_holdout: Estimate
    compute: dict[str, Compute]
    captured: Estimate | None


@dataclass(frozen=True)
class Analysis:
    rules: list[RuleResult]
    headroom: dict[str, Estimate]  # oracle minus the best fixed method, per task
    ratioed: list[str]  # the tasks whose headroom is at least its SE (the others are listed, not ratioed)
    coverage: float  # share of task x replicate cases whose k-fold tied set holds every epsilon-optimal member
    tied_size: float
    epsilon_size: float
    detectable: float  # 2.8 x the SE of raced k-fold minus holdout over the suite


def picks_of(tables: Sequence[Table], families: Sequence[str], charged: dict[str, int]) -> dict[str, list[list[Pick]]]:
    """Every rule's pick per task and replicate: the library's fold rules, the fixed members in ``charged`` (a
    member name: the fold runs it is charged) and the best fixed method chosen leave one task out."""
    picks = {name: [[library_rule(c)(t, r) for r in range(t.folds)] for t in tables] for name, c in FOLD_RULES.items()}
    for name, runs in charged.items():
        picks[name] = [[fixed_rule(name, runs)(t, r) for r in range(t.folds)] for t in tables]
    picks[FIXED] = []
    for i, t in enumerate(tables):
        row = []
        for r in range(t.folds):
            family = best_fixed_family(tables, i, r, families)
            first = t.seen(r)[0]
            read = Compute.total(t.cost[m][first] for m, f in enumerate(t.families) if f == family)
            row.append(Pick(holdout_within(t, r, family), read))
        picks[FIXED].append(row)
    return picks


def analyse(
    tables: Sequence[Table],
    families: Sequence[str],
    charged: dict[str, int],
    epsilon: float = 0.5,
    resamples: int = 2000,
    seed: int = 0,
) -> Analysis:
    """Regret of every rule with intervals resampling tasks, replicates and test images (one draw of the images per
    task, shared by every rule, so differences are paired), the headroom share and the tied set's coverage."""
    rng = np.random.default_rng(seed)
    accuracy = [test_accuracy(t.test, image_weights(t.test.shape[2], resamples, rng)) for t in tables]
    picks = picks_of(tables, families, charged)
    per_rule = {
        name: [regrets(a, [p.member for p in row]) for a, row in zip(accuracy, rows, strict=True)]
        for name, rows in picks.items()
    }

    def suite(per_task: Sequence[np.ndarray]) -> np.ndarray:
        return suite_means(per_task, np.random.default_rng(seed + 1))  # the same task and replicate draws each call

    headroom = {t.task: Estimate.of(suite([r])) for t, r in zip(tables, per_rule[FIXED], strict=True)}
    ses = {t.task: float(np.std(suite([r])[1:])) for t, r in zip(tables, per_rule[FIXED], strict=True)}
    ratioed = [task for task, h in headroom.items() if h.value > 0 and h.value >= ses[task]]
    keep = [i for i, t in enumerate(tables) if t.task in ratioed]
    results = []
    for name, per_task in per_rule.items():
        captured = None
        if keep:
            gap = suite([per_rule[FIXED][i] for i in keep])
            captured = Estimate.of(1 - suite([per_task[i] for i in keep]) / np.where(gap == 0, np.nan, gap))
        results.append(
            RuleResult(
                name,
                {t.task: Estimate.of(suite([r])) for t, r in zip(tables, per_task, strict=True)},
                Estimate.of(suite(per_task)),
                Estimate.of(suite([a - b for a, b in zip(per_task, per_rule[BASELINE], strict=True)])),
                {t.task: _mean_compute([p.compute for p in row]) for t, row in zip(tables, picks[name], strict=True)},
                captured,
            )
        )
    cover, tied, near = _coverage(accuracy, picks[KFOLD], epsilon)
    race_minus = suite([a - b for a, b in zip(per_rule[RACE], per_rule[BASELINE], strict=True)])
    return Analysis(results, headroom, ratioed, cover, tied, near, 2.8 * float(np.std(race_minus[1:])))


def _mean_compute(parts: Sequence[Compute]) -> Compute:
    total = Compute.total(parts)
    n = len(parts)
    return Compute(total.train_images // n, total.eval_images // n, round(total.wall_s / n, 1))


def _coverage(accuracy: Sequence[np.ndarray], picks: Sequence[Sequence[Pick]], epsilon: float):
    """The share of cases whose tied set holds every member within ``epsilon`` of the oracle's fold-r test
    accuracy (as measured), and the mean sizes of both sets."""
    covered, tied, near = [], [], []
    for a, row in zip(accuracy, picks, strict=True):
        for r, pick in enumerate(row):
            best = oracle(a[:1], r)[0]
            optimal = set(np.flatnonzero(a[0, :, r] >= a[0, best, r] - epsilon))
            covered.append(optimal <= set(pick.tied))
            tied.append(len(pick.tied))
            near.append(len(optimal))
    return float(np.mean(covered)), float(np.mean(tied)), float(np.mean(near))
