"""How often ``autopeft.choose`` ties candidates that are equal, and drops ones that are not.

    python scripts/bench_choose.py            # writes results/bench/choose.json (about a minute on 1 core)

Outcomes are drawn per example, independently for each candidate (``--draws`` draws per setting, seed
``--seed``): "equal" settings give both candidates the same true accuracy, so a calibrated two-sided 95%
rule ties them in 95% of draws; "apart" settings give them different accuracies, so the lower one should be
dropped. Each setting is run with counts only (Newcombe's interval) and with per-example outcomes on the same
ids (the paired bootstrap). The McNemar fixture is the textbook case where pairing decides.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from autopeft.choice import choose
from autopeft.records import Evidence

COMMAND = "python scripts/bench_choose.py"
OUT = Path(__file__).resolve().parents[1] / "results" / "bench" / "choose.json"
SETTINGS = [  # (n, accuracy of the first candidate, of the second)
    (200, 0.65, 0.65),
    (200, 0.97, 0.97),
    (1000, 0.50, 0.50),
    (200, 0.85, 0.80),
    (1000, 0.90, 0.82),
]


def tie_rate(n: int, p: float, q: float, paired: bool, draws: int, seed: int) -> float:
    """The share of draws in which both candidates end in the tied set."""
    rng, tied = np.random.default_rng(seed), 0
    for draw in range(draws):
        a, b = (rng.random(n) < p).astype(np.uint8), (rng.random(n) < q).astype(np.uint8)
        if paired:
            evidence = {
                "a": Evidence.from_outcomes(a, ids=np.arange(n)),
                "b": Evidence.from_outcomes(b, ids=np.arange(n)),
            }
        else:
            evidence = {"a": Evidence.from_counts(int(a.sum()), n), "b": Evidence.from_counts(int(b.sum()), n)}
        tied += len(choose(evidence, seed=draw).tied) == 2
    return tied / draws


def mcnemar() -> dict[str, list[float]]:
    """A 425/500 and B 415/500 on the same ids, 12 right only in A and 2 only in B: both intervals."""
    a, b = np.zeros(500, np.uint8), np.zeros(500, np.uint8)
    a[:425], b[:413], b[425:427] = 1, 1, 1
    paired = choose(
        {"A": Evidence.from_outcomes(a, ids=np.arange(500)), "B": Evidence.from_outcomes(b, ids=np.arange(500))}
    )
    unpaired = choose({"A": Evidence.from_counts(425, 500), "B": Evidence.from_counts(415, 500)})
    return {
        name: [c.intervals["B"].low, c.intervals["B"].high] for name, c in (("paired", paired), ("unpaired", unpaired))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rows = []
    for n, p, q in SETTINGS:
        for paired in (False, True):
            rate = tie_rate(n, p, q, paired, args.draws, args.seed)
            rows.append({"n": n, "p": p, "q": q, "paired": paired, "tied": rate})
            print(f"n {n}  {p:.2f} vs {q:.2f}  {'paired  ' if paired else 'unpaired'}  tied {100 * rate:.2f}%")
    result = {
        "command": COMMAND,
        "draws": args.draws,
        "seed": args.seed,
        "alpha": 0.05,
        "settings": rows,
        "mcnemar_fixture_intervals": mcnemar(),
        "machine": platform.machine(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
