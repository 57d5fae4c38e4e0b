"""autopeft: which parameter-efficient fine-tuning method, at which sizes and placements, is best for your
dataset, and what it costs. 'autopeft run' is the main job; 'autopeft COMMAND --help' describes each command."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from autopeft.errors import AutopeftError, BackboneError, ConfigError, RunInterrupted

if TYPE_CHECKING:
    from autopeft.records import SelectionSummary


def _methods(args: argparse.Namespace) -> None:
    """List the methods with their default options and trainable parameters on a backbone."""
    import copy

    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import autopeft
    from autopeft.backbones import family_of
    from autopeft.methods.base import with_family_defaults
    from autopeft.runconfig import BackboneConfig, yaml_inline
    from autopeft.runs import build_backbone

    if args.num_classes < 1:
        raise ConfigError(f"--num-classes: got {args.num_classes}; allowed: an integer >= 1")
    table = Table(title=f"methods on {args.backbone} ({args.num_classes} classes, head excluded)")
    for column in ("method", "default options", "trainable params"):
        table.add_column(column)
    with torch.device("meta"):  # shapes only: no memory, no weight init cost, no weights loaded
        backbone = build_backbone(BackboneConfig(name=args.backbone, pretrained=False))
        backbone.reset_classifier(args.num_classes)
        for name, spec in autopeft.METHODS.items():
            try:
                count = f"{autopeft.count_trainable(autopeft.apply(copy.deepcopy(backbone), {name: {}})):,}"
            except (ConfigError, BackboneError) as err:  # a method this block kind or family cannot host
                count = f"not on this backbone ({err})"
            options = with_family_defaults(spec, spec.options(), family_of(backbone))
            table.add_row(name, escape(yaml_inline(asdict(options))), escape(count))
    Console().print(table)


def _datasets(args: argparse.Namespace) -> None:
    """List the built-in offline tasks: a table on a wide terminal, a block per task elsewhere (a pipe, 80 columns),
    so that no name or source is cut."""
    import textwrap

    from rich.console import Console
    from rich.table import Table

    from autopeft.data import BUILTIN_TASKS, builtin_arrays

    console = Console()
    title = "built-in offline tasks (VTAB-1k protocol; use data.name in a config)"
    rows = [
        (name, str(task.num_classes), f"{task.chance:.1f}", sizes, task.description, task.source)
        for name, task in BUILTIN_TASKS.items()
        for sizes in [" / ".join(str(len(labels)) for _, labels in builtin_arrays(name).values())]
    ]
    if console.width >= 120:
        table = Table(title=title)
        for column in ("name", "classes", "chance %", "train / val / test", "what the label is", "source"):
            table.add_column(column, no_wrap=column not in ("what the label is", "source"))
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    print(title)
    for name, classes, chance, sizes, description, source in rows:
        print(f"\n{name}: {classes} classes, chance {chance}%, train / val / test {sizes}")
        for text in (description, f"source: {source}"):
            print(textwrap.fill(text, console.width, initial_indent="  ", subsequent_indent="  "))


def _train(args: argparse.Namespace) -> None:
    """Train one configuration into a run directory."""
    from autopeft.progress import TrainProgress
    from autopeft.runconfig import load_run_config
    from autopeft.runs import check_buildable, train_run

    config = load_run_config(args.config, args.set)
    check_buildable(config, args.config)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    run = train_run(config, out, resume=args.resume, progress=TrainProgress(out.name))
    if run.status != "completed":
        raise AutopeftError(f"run failed: {run.reason} (status in {out / 'result.json'})")
    print(
        f"{out}: val {_pct(run.val_acc)}  test {_pct(run.test_acc)}  "
        f"trainable {run.trainable_params:,}  {run.wall_time_s:.0f} s"
    )


def _run(args: argparse.Namespace) -> None:
    """The main job: supernet, search, retrain, final runs, comparison table."""
    from autopeft.progress import PipelineProgress
    from autopeft.runconfig import apply_overrides, read_yaml
    from autopeft.search.pipeline import parse_pipeline, run_pipeline

    data = read_yaml(args.config) if args.config else {}
    base = Path(args.config).resolve().parent if args.config else None
    config = parse_pipeline(apply_overrides(data, args.set), args.config or "the embedded default", base)
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "demo")
    note = "" if args.config else DEMO_NOTE
    run_pipeline(config, out, resume=args.resume, progress=PipelineProgress(), note=note)
    print((out / "summary.md").read_text())
    print(
        f"{out}: result.json, candidates.csv, pareto.csv, best.yaml (train the winner: autopeft train {out}/best.yaml)"
    )


DEMO_NOTE = (
    "This is the embedded demo: every row is at one parameter budget, but its schedules are short, chosen so "
    "the demo ends in minutes, and its learning rates are not tuned. The converged, compute-fair comparison of "
    "the search against tuned single methods, Optuna and random search is results/search_vs_sweep.md in "
    "autopeft's repository."
)


def _search(args: argparse.Namespace) -> None:
    """A search on val: the supernet pipeline up to its winner, or a sweep of standalone trials
    on the optuna or the ray engine."""
    from autopeft.progress import PipelineProgress
    from autopeft.runconfig import apply_overrides, read_yaml
    from autopeft.search.engines import run_sweep
    from autopeft.search.pipeline import parse_pipeline, run_pipeline
    from autopeft.search.sweep import Where, parse_sweep

    data = apply_overrides(read_yaml(args.config) if args.config else {}, args.set)
    base = Path(args.config).resolve().parent if args.config else None
    source = args.config or "the embedded default"
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "search")
    if args.engine == "supernet":
        record = run_pipeline(
            parse_pipeline(data, source, base), out, args.resume, PipelineProgress(), choose_only=True
        )
        print(
            f"{out}: winner of {record.candidates} candidates: val {_pct(record.val_acc)}  "
            f"trainable {record.trainable_params:,}\n"
            f"{out}: candidates.csv, pareto.csv, best.yaml (test it on train+val: autopeft retrain {out})"
        )
        _print_selection(record.selection)
        return
    where = Where(
        args.storage,
        args.study,
        args.address,
        args.storage_path,
        args.cpus_per_trial,
        args.gpus_per_trial,
        args.max_concurrent,
    )
    record = run_sweep(args.engine, parse_sweep(data, source, base), out, where, args.resume, PipelineProgress())
    print(
        f"{out}: best trial {record.best_trial}: val {_pct(record.val_acc)}  "
        f"trainable {record.trainable_params:,}  ({record.trials_completed} completed, "
        f"{record.trials_pruned} pruned, {record.trials_failed} failed)\n"
        f"{out}: candidates.csv, pareto.csv, best.yaml (train the winner: autopeft train {out}/best.yaml)"
    )
    _print_selection(record.selection)


def _print_selection(summary: SelectionSummary | None) -> None:
    """How a search's winner was chosen: the tied set and each interval (when its selection recorded one)."""
    from autopeft.selection import selection_lines

    if summary is not None:
        print("\n" + "\n".join(selection_lines(summary)))


def _select(args: argparse.Namespace) -> None:
    """Per-dataset method selection over a suite: strategies on val, finalists on train+val per seed."""
    from autopeft.progress import PipelineProgress
    from autopeft.runconfig import apply_overrides, read_yaml
    from autopeft.search.select import parse_suite, run_select

    data = apply_overrides(read_yaml(args.suite), args.set)
    if args.engine:
        data["engine"] = args.engine
    config = parse_suite(data, args.suite, Path(args.suite).resolve().parent)
    out = Path(args.out) if args.out else Path("runs") / Path(args.suite).stem
    again = f"autopeft select {out / 'config.yaml'} --out {out} --resume"
    run_select(config, out, resume=args.resume, progress=PipelineProgress(), again=again)
    print((out / "summary.md").read_text())
    print(f"{out}: result.json, summary.md, <dataset>/selection.json; final runs in <dataset>/final/<strategy>/seed<s>")


def _retrain(args: argparse.Namespace) -> None:
    """Retrain a finished search's best.yaml on train+val once per seed; test mean +- std."""
    from autopeft.progress import PipelineProgress
    from autopeft.runs import retrain_run

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "retrain"
    record = retrain_run(run_dir, args.seeds, out, PipelineProgress(), args.set)
    spread = f" +- {record.test_acc_std:.2f}" if record.test_acc_std is not None and record.seeds_completed > 1 else ""
    print(
        f"{out}: test {_pct(record.test_acc)}{spread} over seeds {args.seeds} "
        f"({record.seeds_completed} completed)  trainable {record.trainable_params:,}"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _export(args: argparse.Namespace) -> None:
    """Write a run's weights: its adapter directory, or with --merge a plain timm checkpoint."""
    from autopeft.runs import export_run

    print(f"wrote {export_run(Path(args.run_dir), Path(args.out), args.merge)}")


def _prune(args: argparse.Namespace) -> None:
    """E2VPT pruning of a finished run's prompts into a new run directory that rewinds (retrains) them."""
    from autopeft.pruning import prune_run

    out = Path(args.out)
    result = prune_run(Path(args.run_dir), out, args.fraction, args.level, args.segments, args.importance, args.seed)
    how = "" if result.importance == "gradient" else f" ({result.importance} importance, seed {result.seed})"
    print(
        f"{out}: {result.level} pruning of {result.fraction:g}{how}: trainable {result.params_before:,} -> "
        f"{result.params_after:,}\n{out}: pruned/, prune.json, config.yaml (rewind: autopeft train "
        f"{out / 'config.yaml'} --out {out})"
    )


def _choose(args: argparse.Namespace) -> None:
    """The choice among a table's candidates: the leader, the tied set, each interval to the leader."""
    import json

    from autopeft.choice import choice_table, choose, read_table

    evidence = read_table(Path(args.table))
    choice = choose(evidence, args.alpha, args.prefer, args.adjust, args.seed)
    print(json.dumps(choice.to_dict(), indent=2) if args.json else "\n".join(choice_table(choice, evidence)))


def _config(args: argparse.Namespace) -> None:
    """The option reference: keys, types, defaults in YAML spelling, help."""
    from autopeft.docs import markdown_reference, text_reference

    print(markdown_reference() if args.markdown else text_reference(args.topic), end="")


def _report(args: argparse.Namespace) -> None:
    """Leaderboard tables, plots and one self-contained HTML page over finished run directories."""
    from autopeft.report import write_report

    written = write_report([Path(d) for d in args.run_dirs], Path(args.out))
    print(f"{args.out}: {', '.join(p.name for p in written)}")


def build_parser() -> argparse.ArgumentParser:
    from autopeft import __version__

    parser = argparse.ArgumentParser(prog="autopeft", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autopeft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(commands)
    _add_search_commands(commands)
    _add_result_commands(commands)
    return parser


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    """methods, datasets, train and run."""
    methods = commands.add_parser("methods", help="list methods, default options and parameter counts")
    methods.add_argument(
        "--backbone", default="vit_base_patch16_224", help="a timm model or built-in backbone (%(default)s)"
    )
    methods.add_argument("--num-classes", type=int, default=100, help="classes of the head (%(default)s)")
    methods.set_defaults(run=_methods)
    commands.add_parser("datasets", help="list the built-in offline datasets").set_defaults(run=_datasets)
    train = commands.add_parser("train", help="train one configuration (methods + hyperparameters)")
    train.add_argument("config", help="run config YAML")
    train.add_argument("--out", help="run directory (default runs/<config name>)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    train.set_defaults(run=_train)
    run = commands.add_parser("run", help="main job: supernet -> search -> retrain -> test -> comparison table")
    run.add_argument("config", nargs="?", help="pipeline config YAML (default: the embedded offline demo)")
    run.add_argument("--out", help="run directory (default runs/<config name>, or runs/demo)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    run.add_argument("--resume", action="store_true", help="continue an interrupted pipeline in --out")
    run.set_defaults(run=_run)


def _add_search_commands(commands: argparse._SubParsersAction) -> None:
    """search, select and retrain."""
    search = commands.add_parser("search", help="search on val: a supernet, or a sweep of standalone trials")
    search.add_argument(
        "config",
        nargs="?",
        help="sweep config YAML, or for --engine supernet a pipeline config as `run` takes "
        "(default: the full space on digits, or the embedded demo)",
    )
    search.add_argument(
        "--engine",
        choices=("supernet", "optuna", "ray"),
        default="optuna",
        help="supernet: `autopeft run` stopped at its val-chosen winner; optuna/ray: standalone trials",
    )
    search.add_argument("--out", help="run directory (default runs/<config name>, or runs/search)")
    search.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    search.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    search.add_argument("--storage", help="optuna: SQLAlchemy URL or journal file (default: SQLite in --out)")
    search.add_argument("--study", default="autopeft", help="optuna: study name; workers on one storage share it")
    search.add_argument("--address", help="ray: join this cluster (host:port or auto); default: start a local Ray")
    search.add_argument("--storage-path", help="ray: results and checkpoints, on a filesystem every node reaches")
    search.add_argument("--cpus-per-trial", type=float, default=1.0, help="ray: CPUs each trial reserves")
    search.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="ray: GPUs each trial reserves (0.5 shares one)"
    )
    search.add_argument(
        "--max-concurrent", type=int, default=0, help="ray: most trials at once (0: what the cluster's CPUs/GPUs hold)"
    )
    search.set_defaults(run=_search)
    select = commands.add_parser("select", help="per-dataset method selection over a suite of datasets")
    select.add_argument("suite", help="suite YAML (e.g. search_spaces/suite_demo.yaml)")
    select.add_argument("--out", help="output directory (default runs/<suite name>)")
    select.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite key")
    select.add_argument("--resume", action="store_true", help="continue an interrupted selection in --out")
    select.add_argument(
        "--engine", choices=("optuna", "ray"), help="the single-method sweeps' engine (overrides the suite)"
    )
    select.set_defaults(run=_select)
    retrain = commands.add_parser("retrain", help="retrain a finished search's best.yaml on train+val per seed")
    retrain.add_argument("run_dir", help="a run directory of autopeft search, run or select that holds best.yaml")
    retrain.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED", help="one final run per seed (0 1 2)"
    )
    retrain.add_argument("--out", help="where the seed runs go (default RUN_DIR/retrain)")
    retrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of best.yaml")
    retrain.set_defaults(run=_retrain)


def _add_result_commands(commands: argparse._SubParsersAction) -> None:
    """export, prune, choose, config and report."""
    export = commands.add_parser("export", help="export a finished run's weights")
    export.add_argument("run_dir", help="a finished run directory (autopeft train, or a final run of run/select)")
    export.add_argument("--out", required=True, help="output: adapter folder, or a .safetensors file with --merge")
    export.add_argument("--merge", action="store_true", help="fold LoRA/SSF into the backbone (plain timm weights)")
    export.set_defaults(run=_export)
    prune = commands.add_parser("prune", help="E2VPT: prune a finished run's vpt/kv_prompt prompts to rewind them")
    prune.add_argument("run_dir", help="a finished autopeft train run directory with vpt or kv_prompt")
    prune.add_argument("--fraction", type=float, required=True, help="share of each layer's tokens/segments to remove")
    prune.add_argument(
        "--level",
        choices=("token", "segment", "both"),
        default="token",
        help="token: drop whole prompt tokens; segment: zero parts of tokens; both: tokens, then segments",
    )
    prune.add_argument("--segments", type=int, default=8, help="equal parts each token is cut into (E2VPT: 8)")
    prune.add_argument(
        "--importance",
        choices=("gradient", "random"),
        default="gradient",
        help="gradient: E2VPT's |dL/d mask| over the run's training split; random: a control with the same counts",
    )
    prune.add_argument("--seed", type=int, default=0, help="random importance's seed")
    prune.add_argument("--out", required=True, help="new run directory: pruned adapter and the rewinding config")
    prune.set_defaults(run=_prune)
    choose = commands.add_parser("choose", help="choose among candidates' val counts, with the tied set")
    choose.add_argument("table", help="CSV with columns name, correct, n (optional params, loss)")
    choose.add_argument("--alpha", type=float, default=0.05, help="two-sided level of each interval")
    choose.add_argument(
        "--prefer",
        choices=("best", "fewest_params"),
        default="best",
        help="best: the leader; fewest_params: the smallest candidate tied with it",
    )
    choose.add_argument("--adjust", choices=("none", "holm"), default="none", help="holm: over the P - 1 comparisons")
    choose.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    choose.add_argument("--json", action="store_true", help="print the choice as JSON")
    choose.set_defaults(run=_choose)
    config = commands.add_parser("config", help="every option of a command's config file: type, default, help")
    config.add_argument(
        "topic",
        nargs="?",
        choices=("train", "run", "search", "select", "methods"),
        help="whose options (default: every command's)",
    )
    config.add_argument("--markdown", action="store_true", help="the whole reference as Markdown (docs/config.md)")
    config.set_defaults(run=_config)
    report = commands.add_parser("report", help="leaderboard tables, plots and HTML over run directories")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding a result.json")
    report.add_argument("--out", required=True, help="folder for leaderboard.{md,csv,tex,html} and the plots")
    report.set_defaults(run=_report)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    try:
        if args.command not in TORCH_FREE:
            _import_torch()
        if args.threads is not None:
            _threads(args.threads)
        args.run(args)
    except (AutopeftError, OSError, KeyboardInterrupt) as err:
        if args.debug:
            raise
        print(f"autopeft: error: {one_line(err)}", file=sys.stderr)
        return 130 if isinstance(err, (KeyboardInterrupt, RunInterrupted)) else 2
    return 0


TORCH_FREE = ("choose",)  # commands that never import torch


def _import_torch() -> None:
    """Import torch with Ctrl-C held back until it is loaded: a Ctrl-C inside torch's C start-up aborts the
    process or is swallowed there (leaving numpy half imported); held back, it arrives after as KeyboardInterrupt."""
    block = getattr(signal, "pthread_sigmask", None)
    if block is None:  # no signal masks on this platform
        import torch

        return
    block(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import torch  # noqa: F401
    finally:
        block(signal.SIG_UNBLOCK, {signal.SIGINT})


def _threads(count: int) -> None:
    import torch

    if count < 1:
        raise ConfigError(f"--threads: got {count}; allowed: an integer >= 1")
    torch.set_num_threads(count)


def one_line(err: BaseException) -> str:
    """The error as one line: a file-system error names the file and says what went wrong."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C) outside a training epoch; every file already written is complete"
    if isinstance(err, OSError) and not isinstance(err, AutopeftError):
        what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}.get(err.errno)
        where = err.filename or "a file"
        return f"{where}: {what or err.strerror or err}" + (f" (and {err.filename2})" if err.filename2 else "")
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
