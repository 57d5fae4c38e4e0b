"""E2VPT prompt pruning (Han et al., ICCV 2023): remove the prompt tokens, then the token segments, that matter least.

Every prompt token ``k`` of a layer has a mask ``rho_k`` (the prompt enters as ``rho_k * P_k``); its importance
is ``S_k = E |dL / d rho_k|`` at ``rho = 1``, the mean over the batches of a training split of the absolute
gradient of the cross-entropy loss. Token pruning removes a layer's lowest-scoring tokens from the
sequence: the layer's prompt parameter shrinks to the kept tokens, so they cost nothing. Segment pruning
cuts every remaining token into ``segments`` equal parts, each with its own mask and importance, and
fixes a layer's lowest-scoring segments at zero: they leave the parameters (and the saved adapter), and
the mask is kept with the adapter. Tokens and segments are ranked within each layer, as in the paper.
``importance="random"`` is a control, not E2VPT: the same number of tokens (or segments) per layer removed at
random (scores drawn uniformly from a seeded generator, no pass over the data).
Rewinding, the paper's last step, is a normal training run of the pruned model (``autopeft prune``
writes one).

VPT is the paper's method. Key-value prompts (``kv_prompt``) are pruned the same way, an extension beyond
the paper: a token is one key (and, unshared, one value) prompt position; a token mask scales both, and
each tensor's segments have their own masks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.api import count_trainable, get_sizes, load_adapter, save_adapter
from autopeft.build import build_model
from autopeft.config import parse_options
from autopeft.data import Split, TaskData
from autopeft.data.transforms import input_config, normalize
from autopeft.errors import ConfigError
from autopeft.files import write_json, write_text
from autopeft.jobs.rundir import RunDir
from autopeft.jobs.train import check_finished
from autopeft.methods.prompts import PromptWrapper, mask_rows, prompt_wrappers
from autopeft.records import Compute
from autopeft.runconfig import dump_run_config, load_run_config
from autopeft.train import batches, device_of, resolve_device

Level = Literal["token", "segment", "both"]
LEVELS = ("token", "segment", "both")
Importance = Literal["gradient", "random"]
IMPORTANCES = ("gradient", "random")
PRUNABLE = ("vpt", "kv_prompt")
PRUNED = "pruned"  # the pruned adapter in the new run directory
RECORD = "prune.json"


@dataclass
class LayerPruning:
    """What pruning kept of one layer's prompts (``method`` in block ``block``).

    ``tokens``: the kept tokens, as indices among the layer's active tokens before pruning.
    ``token_scores``: the importance of each of those tokens (empty without token pruning).
    ``segments``: per prompt tensor, one string per kept token, one character per segment: 1 kept, 0
    pruned (empty while no segment was ever pruned). ``segment_scores``: per tensor, the importance of
    each segment of each kept token (empty without segment pruning; 0 for segments pruned before).
    """

    method: str
    block: int
    tokens: list[int]
    token_scores: list[float] = field(default_factory=list)
    segments: dict[str, list[str]] = field(default_factory=dict)
    segment_scores: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass
class PruneResult:
    """One pruning: its settings (``segments`` per token matters to the segment and both levels), the
    trainable parameters before and after (head excluded, as ``count_trainable``), what each layer kept, and
    what scoring took (``compute``: every image of a scoring pass over the split is a forward+backward pass;
    one pass per level, two for ``both``; none for random importance). ``importance``: how tokens were
    scored; ``seed``: random importance's seed (None for gradient importance)."""

    level: Level
    fraction: float
    segments: int
    split: str
    params_before: int
    params_after: int
    layers: list[LayerPruning]
    compute: Compute = field(default_factory=Compute)
    importance: Importance = "gradient"
    seed: int | None = None


def prune(
    model: nn.Module,
    data: TaskData,
    fraction: float,
    level: Level = "token",
    segments: int = 8,
    split: str = "train",
    batch_size: int = 64,
    importance: Importance = "gradient",
    seed: int = 0,
) -> PruneResult:
    """Prune ``model``'s VPT and key-value prompts in place; return what was kept.

    Importance comes from ``data``'s ``split`` (batches of ``batch_size``, the model's normalisation,
    no augmentation, eval mode). ``level``: ``token`` removes ``floor(fraction * n)`` of the ``n`` tokens
    of each layer; ``segment`` cuts each token into ``segments`` equal parts and fixes ``floor(fraction *
    m)`` of the ``m`` segments of each layer not pruned before at zero; ``both`` prunes tokens, then
    scores and prunes the segments of the kept ones. Tokens past a layer's active size are dropped first.
    ``model.autopeft_methods`` records the kept token counts as the prompts' lengths.
    ``importance="random"`` (a control) scores every token and segment with a uniform draw from a generator
    seeded with ``seed`` instead (layers in tree order), removing the same counts, with no pass over the split.
    """
    start = time.perf_counter()
    _check_settings(fraction, level, importance)
    modules = [m for m in prompt_wrappers(model) if m.method in PRUNABLE]
    if not any(m.size for m in modules):
        methods = ", ".join(getattr(model, "autopeft_methods", {})) or "none"
        raise ConfigError(
            f"prune: the model has no prompt tokens (its methods: {methods}); allowed: a model with vpt or "
            f"kv_prompt applied at a length above 0"
        )
    if level != "token":
        check_segments(modules, segments)
    samples = data.split(split)
    before = count_trainable(model)
    for module in modules:
        if module.size < module.max_size:
            module.keep_tokens(list(range(module.size)))
    modules = [m for m in modules if m.size]
    layers = [LayerPruning(m.method, m.block, list(range(m.size))) for m in modules]
    generator = torch.Generator().manual_seed(seed) if importance == "random" else None
    if level in ("token", "both"):
        token_scores = (
            token_importance(model, samples, batch_size)
            if generator is None
            else [torch.rand(m.size, generator=generator) for m in modules]
        )
        for module, layer, scores in zip(modules, layers, token_scores, strict=True):
            removed = set(_lowest(scores, math.floor(fraction * len(scores))))
            layer.tokens = [k for k in range(len(scores)) if k not in removed]
            layer.token_scores = scores.tolist()
            module.keep_tokens(layer.tokens)
    if level in ("segment", "both"):
        segment_scores = (
            segment_importance(model, samples, batch_size, segments)
            if generator is None
            else [{name: torch.rand(m.size, segments, generator=generator) for name in m.present()} for m in modules]
        )
        for module, layer, scores in zip(modules, layers, segment_scores, strict=True):
            _prune_segments(module, scores, fraction)
            layer.segment_scores = {name: score.tolist() for name, score in scores.items()}
    for module, layer in zip(modules, layers, strict=True):
        kept = {name: module.segment_keep(name) for name in module.present()}
        layer.segments = {name: mask_rows(keep) for name, keep in kept.items() if keep is not None}
    _record_lengths(model)
    passes = 0 if generator is not None else 2 if level == "both" else 1
    compute = Compute(passes * len(samples), 0, round(time.perf_counter() - start, 2))
    return PruneResult(
        level,
        fraction,
        segments,
        split,
        before,
        count_trainable(model),
        layers,
        compute,
        importance,
        None if generator is None else seed,
    )


def _check_settings(fraction: float, level: str, importance: str = "gradient") -> None:
    check_fraction(fraction)
    if level not in LEVELS:
        raise ConfigError(f"prune level: got {level!r}; allowed: {', '.join(LEVELS)}")
    if importance not in IMPORTANCES:
        raise ConfigError(f"prune importance: got {importance!r}; allowed: {', '.join(IMPORTANCES)}")


def check_fraction(fraction: float, option: str = "prune fraction") -> None:
    """One line naming ``option`` unless ``fraction`` is a number with 0 < fraction < 1."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"{option}: got {fraction!r}; allowed: a number with 0 < fraction < 1")


def check_segments(modules: list[PromptWrapper], segments: int, option: str = "prune segments") -> None:
    """One line naming ``option`` unless ``segments`` divides the width of every prompt tensor of ``modules``
    and equals the count of earlier segment masks."""
    for module in modules:
        for name in module.present():
            width, keep = module.token_rows(name).shape[1], module.segment_keep(name)
            if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1 or width % segments:
                raise ConfigError(
                    f"{option}: got {segments!r}; allowed: a positive integer dividing the prompt width "
                    f"{width} ({module.method} block {module.block})"
                )
            if keep is not None and keep.shape[1] != segments:
                raise ConfigError(
                    f"{option}: got {segments}, but {module.method} block {module.block} is already cut "
                    f"into {keep.shape[1]} segments; allowed: {keep.shape[1]}"
                )


def token_importance(model: nn.Module, samples: Split, batch_size: int) -> list[torch.Tensor]:
    """Per active prompt module (in tree order), the importance of each active token: the mean over
    batches of ``|dL / d rho_k|``, one mask ``rho_k`` scaling every tensor of token ``k``."""
    pooled = (
        [{"token": sum(g.values())[:, 0]} for g in batch] for batch in _mask_gradients(model, samples, batch_size, 1)
    )
    return [scores["token"] for scores in _mean_abs(pooled)]


def segment_importance(
    model: nn.Module, samples: Split, batch_size: int, segments: int
) -> list[dict[str, torch.Tensor]]:
    """Per active prompt module, per tensor, the importance ``(tokens, segments)`` of each segment of each
    active token: the mean over batches of ``|dL / d rho_ks|`` (0 for a segment pruned before)."""
    return _mean_abs(_mask_gradients(model, samples, batch_size, segments))


def _mean_abs(gradients: Iterator[list[dict[str, torch.Tensor]]]) -> list[dict[str, torch.Tensor]]:
    """The mean over batches of the absolute gradients."""
    totals: list[dict[str, torch.Tensor]] = []
    count = 0
    for batch in gradients:
        if not totals:
            totals = [{name: torch.zeros_like(g) for name, g in module.items()} for module in batch]
        for total, module in zip(totals, batch, strict=True):
            for name, g in module.items():
                total[name] += g.abs()
        count += 1
    return [{name: t / count for name, t in total.items()} for total in totals]


def _mask_gradients(
    model: nn.Module, samples: Split, batch_size: int, segments: int
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Per batch, per active prompt module, per tensor: ``dL / d rho`` at ``rho = 1`` for masks on
    ``segments`` equal parts of each token, ``(tokens, segments)``. A mask scales its part of the prompt
    ``P``, so its gradient is the sum over the part of ``P * dL/dP``."""
    modules = [m for m in prompt_wrappers(model) if m.method in PRUNABLE and m.size]
    params = [(m, name, m.prompt_parameter(name)) for m in modules for name in m.present()]
    _, mean, std = input_config(model)
    device, training = device_of(model), model.training
    model.eval()
    try:
        for positions in batches(len(samples), batch_size, None):
            images, labels = samples.batch(positions)
            loss = F.cross_entropy(model(normalize(images.to(device), mean, std)).float(), labels.to(device))
            grads = torch.autograd.grad(loss, [param for _, _, param in params])
            per_module: dict[int, dict[str, torch.Tensor]] = {id(m): {} for m in modules}
            for (module, name, param), grad in zip(params, grads, strict=True):
                rows = module.token_rows(name, (param * grad).detach())[: module.size]
                per_module[id(module)][name] = rows.reshape(module.size, segments, -1).sum(-1)
            yield [per_module[id(m)] for m in modules]
    finally:
        model.train(training)


def _lowest(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` lowest scores of a 1-D tensor (ties: the lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i].item(), i))
    return order[:count]


def _prune_segments(module: PromptWrapper, scores: dict[str, torch.Tensor], fraction: float) -> None:
    """Fix the lowest-scoring ``floor(fraction * m)`` of the module's ``m`` unpruned segments at zero."""
    names = list(scores)
    keeps = {}
    for name in names:
        keep = module.segment_keep(name)
        keeps[name] = torch.ones_like(scores[name], dtype=torch.bool) if keep is None else keep.clone()
    candidates = [(name, k, s) for name in names for k, s in keeps[name].nonzero().tolist()]
    flat = torch.tensor([scores[name][k, s].item() for name, k, s in candidates])
    for index in _lowest(flat, math.floor(fraction * len(candidates))):
        name, k, s = candidates[index]
        keeps[name][k, s] = False
    for name in names:
        module.keep_segments(name, keeps[name])


def _record_lengths(model: nn.Module) -> None:
    """Set the prompts' lengths in ``model.autopeft_methods`` to the kept token counts."""
    methods = getattr(model, "autopeft_methods", {})
    for method in PRUNABLE:
        if method in methods:
            sizes = get_sizes(model, method)
            shallow = method == "vpt" and methods[method]["mode"] == "shallow"
            methods[method] = {**methods[method], "length": sizes[0] if shallow else sizes}


def prune_run(
    run_dir: Path,
    out: Path,
    fraction: float,
    level: Level = "token",
    segments: int = 8,
    importance: Importance = "gradient",
    seed: int = 0,
) -> PruneResult:
    """Prune a finished ``autopeft train`` run into the new run directory ``out``, importance from the
    split it trained on (or random, as ``prune``): ``out/pruned`` holds the pruned adapter, ``out/prune.json``
    what was kept (and from which run), and ``out/config.yaml`` the run's config with the kept lengths,
    starting from ``out/pruned`` (``init``). Rewinding is ``autopeft train out/config.yaml --out out``: the
    pruned model retrained with the run's own schedule (lr, weight decay, epochs), resumable like any run."""
    _check_settings(fraction, level, importance)
    check_finished(run_dir)
    config = load_run_config(run_dir / "config.yaml")
    with RunDir(out, command="prune").writing(None, None):
        model, task, _ = build_model(config, with_methods=False)
        load_adapter(model, run_dir)
        model.to(resolve_device(config.train.device))
        split = "trainval" if config.final else "train"
        result = prune(model, task, fraction, level, segments, split, config.train.batch_size, importance, seed)
        save_adapter(model, out / PRUNED)
        write_json(out / RECORD, {"run": str(run_dir), **asdict(result)})
        rewind = replace(config, methods=model.autopeft_methods, init=str((out / PRUNED).resolve()))
        write_text(out / "config.yaml", dump_run_config(rewind))
    return result


def read_prune_run(out: Path) -> PruneResult:
    """What ``prune_run`` kept in ``out`` (its ``prune.json``)."""
    data = json.loads((out / RECORD).read_text())
    return parse_options(PruneResult, {k: v for k, v in data.items() if k != "run"}, str(out / RECORD))
