"""autopeft: which parameter-efficient fine-tuning method, at which sizes and placements, is best for your
dataset, and what it costs. 'autopeft run' is the main job; 'autopeft COMMAND --help' describes each command."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from autopeft.errors import AutopeftError, BackboneError, ConfigError, RunInterrupted
from autopeft.jobs import Job, make


def _methods(args: argparse.Namespace) -> None:
    """List the methods with their default options and trainable parameters on a backbone."""
    import copy

    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import autopeft
    from autopeft.backbones import family_of
    from autopeft.build import build_backbone
    from autopeft.methods.base import with_family_defaults
    from autopeft.runconfig import BackboneConfig, yaml_inline

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


def _job(args: argparse.Namespace) -> None:
    """A config job (train, run, search, select): the config file (or the embedded default) with the --set
    overrides, parsed by the job and run into --out (default runs/<config name>); then what it wrote."""
    from autopeft.progress import PipelineProgress
    from autopeft.runconfig import apply_overrides, read_yaml

    job, source = args.job(args), args.config
    data = apply_overrides(read_yaml(source) if source else {}, args.set)
    config = job.parse(data, source or "the embedded default", Path(source).resolve().parent if source else None)
    out = Path(args.out) if args.out else Path("runs") / (Path(source).stem if source else job.name)
    print(job.done(job.run(config, out, args.resume, PipelineProgress()), out))


def _train_job(args: argparse.Namespace) -> Job:
    return make("train")


def _run_job(args: argparse.Namespace) -> Job:
    return make("run", embedded=args.config is None)


def _search_job(args: argparse.Namespace) -> Job:
    if args.engine == "supernet":
        return make("search supernet")
    from autopeft.search.sweep import Where

    where = Where(
        args.storage,
        args.study,
        args.address,
        args.storage_path,
        args.cpus_per_trial,
        args.gpus_per_trial,
        args.max_concurrent,
    )
    return make("search sweep", engine=args.engine, where=where)


def _select_job(args: argparse.Namespace) -> Job:
    return make("select", engine=args.engine)


def _retrain(args: argparse.Namespace) -> None:
    """Retrain a finished search's best.yaml on train+val once per seed; test mean +- std."""
    from autopeft.jobs.train import retrain_run
    from autopeft.progress import PipelineProgress
    from autopeft.report.summaries import percent

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "retrain"
    record = retrain_run(run_dir, args.seeds, out, PipelineProgress(), args.set)
    spread = f" +- {record.test_acc_std:.2f}" if record.test_acc_std is not None and record.seeds_completed > 1 else ""
    print(
        f"{out}: test {percent(record.test_acc, '%')}{spread} over seeds {args.seeds} "
        f"({record.seeds_completed} completed)  trainable {record.trainable_params:,}"
    )


def _export(args: argparse.Namespace) -> None:
    """Write a run's weights: its adapter directory, or with --merge a plain timm checkpoint."""
    from autopeft.jobs.train import export_run

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


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, its own arguments, and what runs it (``job``: a config job, run by ``_job``)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None] = _job
    job: Callable[[argparse.Namespace], Job] | None = None


def _job_arguments(config: str, out: str, resume: str, optional: bool = False) -> Callable:
    """A config job's arguments: its config file, --out, --set and --resume."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", nargs="?" if optional else None, help=config)
        parser.add_argument("--out", help=out)
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        parser.add_argument("--resume", action="store_true", help=resume)

    return add


def _both(*adders: Callable[[argparse.ArgumentParser], None]) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        for adder in adders:
            adder(parser)

    return add


def _no_arguments(parser: argparse.ArgumentParser) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    from autopeft import __version__

    parser = argparse.ArgumentParser(prog="autopeft", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autopeft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run, job=command.job)
    return parser


def _methods_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone", default="vit_base_patch16_224", help="a timm model or built-in backbone (%(default)s)"
    )
    parser.add_argument("--num-classes", type=int, default=100, help="classes of the head (%(default)s)")


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("supernet", "optuna", "ray"),
        default="optuna",
        help="supernet: `autopeft run` stopped at its val-chosen winner; optuna/ray: standalone trials",
    )
    parser.add_argument("--storage", help="optuna: SQLAlchemy URL or journal file (default: SQLite in --out)")
    parser.add_argument("--study", default="autopeft", help="optuna: study name; workers on one storage share it")
    parser.add_argument("--address", help="ray: join this cluster (host:port or auto); default: start a local Ray")
    parser.add_argument("--storage-path", help="ray: results and checkpoints, on a filesystem every node reaches")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="ray: CPUs each trial reserves")
    parser.add_argument(
        "--gpus-per-trial", type=float, default=0.0, help="ray: GPUs each trial reserves (0.5 shares one)"
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=0, help="ray: most trials at once (0: what the cluster's CPUs/GPUs hold)"
    )


def _select_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine", choices=("optuna", "ray"), help="the single-method sweeps' engine (overrides the suite)"
    )


def _retrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory of autopeft search, run or select that holds best.yaml")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED", help="one final run per seed (0 1 2)"
    )
    parser.add_argument("--out", help="where the seed runs go (default RUN_DIR/retrain)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of best.yaml")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished run directory (autopeft train, or a final run of run/select)")
    parser.add_argument("--out", required=True, help="output: adapter folder, or a .safetensors file with --merge")
    parser.add_argument("--merge", action="store_true", help="fold LoRA/SSF into the backbone (plain timm weights)")


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished autopeft train run directory with vpt or kv_prompt")
    parser.add_argument("--fraction", type=float, required=True, help="share of each layer's tokens/segments to remove")
    parser.add_argument(
        "--level",
        choices=("token", "segment", "both"),
        default="token",
        help="token: drop whole prompt tokens; segment: zero parts of tokens; both: tokens, then segments",
    )
    parser.add_argument("--segments", type=int, default=8, help="equal parts each token is cut into (E2VPT: 8)")
    parser.add_argument(
        "--importance",
        choices=("gradient", "random"),
        default="gradient",
        help="gradient: E2VPT's |dL/d mask| over the run's training split; random: a control with the same counts",
    )
    parser.add_argument("--seed", type=int, default=0, help="random importance's seed")
    parser.add_argument("--out", required=True, help="new run directory: pruned adapter and the rewinding config")


def _choose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="CSV with columns name, correct, n (optional params, loss)")
    parser.add_argument("--alpha", type=float, default=0.05, help="two-sided level of each interval")
    parser.add_argument(
        "--prefer",
        choices=("best", "fewest_params"),
        default="best",
        help="best: the leader; fewest_params: the smallest candidate tied with it",
    )
    parser.add_argument("--adjust", choices=("none", "holm"), default="none", help="holm: over the P - 1 comparisons")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    parser.add_argument("--json", action="store_true", help="print the choice as JSON")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "topic",
        nargs="?",
        choices=("train", "run", "search", "select", "methods"),
        help="whose options (default: every command's)",
    )
    parser.add_argument("--markdown", action="store_true", help="the whole reference as Markdown (docs/config.md)")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding a result.json")
    parser.add_argument("--out", required=True, help="folder for leaderboard.{md,csv,tex,html} and the plots")


COMMANDS = (
    Command("methods", "list methods, default options and parameter counts", _methods_arguments, _methods),
    Command("datasets", "list the built-in offline datasets", _no_arguments, _datasets),
    Command(
        "train",
        "train one configuration (methods + hyperparameters)",
        _job_arguments(
            "run config YAML",
            "run directory (default runs/<config name>)",
            "continue a killed run from its last checkpoint",
        ),
        job=_train_job,
    ),
    Command(
        "run",
        "main job: supernet -> search -> retrain -> test -> comparison table",
        _job_arguments(
            "pipeline config YAML (default: the embedded offline demo)",
            "run directory (default runs/<config name>, or runs/demo)",
            "continue an interrupted pipeline in --out",
            optional=True,
        ),
        job=_run_job,
    ),
    Command(
        "search",
        "search on val: a supernet, or a sweep of standalone trials",
        _both(
            _job_arguments(
                "sweep config YAML, or for --engine supernet a pipeline config as `run` takes "
                "(default: the full space on digits, or the embedded demo)",
                "run directory (default runs/<config name>, or runs/search)",
                "continue an interrupted sweep in --out",
                optional=True,
            ),
            _search_arguments,
        ),
        job=_search_job,
    ),
    Command(
        "select",
        "per-dataset method selection over a suite of datasets",
        _both(
            _job_arguments(
                "suite YAML (e.g. search_spaces/suite_demo.yaml)",
                "output directory (default runs/<suite name>)",
                "continue an interrupted selection in --out",
            ),
            _select_arguments,
        ),
        job=_select_job,
    ),
    Command("retrain", "retrain a finished search's best.yaml on train+val per seed", _retrain_arguments, _retrain),
    Command("export", "export a finished run's weights", _export_arguments, _export),
    Command("prune", "E2VPT: prune a finished run's vpt/kv_prompt prompts to rewind them", _prune_arguments, _prune),
    Command("choose", "choose among candidates' val counts, with the tied set", _choose_arguments, _choose),
    Command("config", "every option of a command's config file: type, default, help", _config_arguments, _config),
    Command("report", "leaderboard tables, plots and HTML over run directories", _report_arguments, _report),
)


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
