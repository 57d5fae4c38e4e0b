"""The ``autopeft`` command."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

from autopeft.errors import AutopeftError


def _methods(args: argparse.Namespace) -> None:
    """List the methods with their default options and trainable parameters on a backbone."""
    import copy

    import torch
    from rich.console import Console
    from rich.table import Table

    import autopeft

    table = Table(title=f"methods on {args.backbone} ({args.num_classes} classes, head excluded)")
    for column in ("method", "default options", "trainable params"):
        table.add_column(column)
    with torch.device("meta"):  # shapes only: no memory, no weight init cost
        backbone = autopeft.create_backbone(args.backbone, args.num_classes)
        for name, spec in autopeft.METHODS.items():
            model = autopeft.apply(copy.deepcopy(backbone), {name: {}})
            table.add_row(name, str(asdict(spec.options())), f"{autopeft.count_trainable(model):,}")
    Console().print(table)


def _datasets(args: argparse.Namespace) -> None:
    """List the built-in offline tasks."""
    from rich.console import Console
    from rich.table import Table

    from autopeft.data import BUILTIN_TASKS, builtin_arrays

    table = Table(title="built-in offline tasks (VTAB-1k protocol; use data.name in a config)")
    for column in ("name", "classes", "train / val / test", "what the label is", "source"):
        table.add_column(column)
    for name, task in BUILTIN_TASKS.items():
        sizes = " / ".join(str(len(labels)) for _, labels in builtin_arrays(name).values())
        table.add_row(name, str(task.num_classes), sizes, task.description, task.source)
    Console().print(table)


def build_parser() -> argparse.ArgumentParser:
    from autopeft import __version__

    parser = argparse.ArgumentParser(prog="autopeft", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autopeft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    methods = commands.add_parser("methods", help="list methods, default options and parameter counts")
    methods.add_argument("--backbone", default="vit_base_patch16_224")
    methods.add_argument("--num-classes", type=int, default=100)
    methods.set_defaults(run=_methods)
    commands.add_parser("datasets", help="list the built-in offline datasets").set_defaults(run=_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except AutopeftError as err:
        if args.debug:
            raise
        print(f"autopeft: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
