"""How many places enter each autopeft module along ``autopeft run``'s config: a layering check.

    HF_HUB_OFFLINE=1 python scripts/config_path.py    # one line per module: how many places enter it, and which

A tiny ``autopeft run`` (the pipeline test's config: a tiny ViT on digits, 1-2 epochs) runs under a profiler.
Every call into an autopeft module from another module that passes a config object (a dataclass whose class name
ends in Config or Stage: the run's config and every section or run config made from it) counts its calling
function once; dataclass construction is left out. A module entered from many places is a seam the config crosses
often.
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autopeft.search.pipeline import parse_pipeline, run_pipeline
from tests.test_pipeline import CONFIG


def main() -> None:
    entries: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)

    def module(frame) -> str:
        return frame.f_globals.get("__name__", "")

    def profile(frame, event, arg) -> None:
        name, caller = module(frame), frame.f_back
        if event != "call" or not name.startswith("autopeft") or caller is None or module(caller) == name:
            return
        if frame.f_code.co_name in ("__init__", "__post_init__") or module(caller) == "dataclasses":
            return
        code = frame.f_code
        arguments = [frame.f_locals.get(v) for v in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        if any(type(a).__name__.endswith(("Config", "Stage")) for a in arguments):
            entries[name].add((module(caller), caller.f_code.co_name))

    config = parse_pipeline(CONFIG, "config_path")
    out = Path(tempfile.mkdtemp()) / "run"
    sys.setprofile(profile)
    try:
        run_pipeline(config, out)
    finally:
        sys.setprofile(None)
    for name, places in sorted(entries.items(), key=lambda item: (-len(item[1]), item[0])):
        print(f"{len(places):>2}  {name}: " + ", ".join(f"{m}.{f}" for m, f in sorted(places)))


if __name__ == "__main__":
    main()
