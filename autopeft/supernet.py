"""NOAH-style weight-sharing supernet over the elastic methods, its search space and candidates.

A ``SearchSpace`` says which sizes each block may take per method, which scalar method options
and training hyperparameters are searched, and (optionally) NOAH's depth gene. ``suggest`` is
the one define-by-run function of a space (``trial.suggest_*`` only): Optuna studies, Ray
Tune's ``OptunaSearch``, evolution and random sampling all reach candidates through it, and
each candidate is a frozen, hashable ``SubnetConfig``.

``Supernet`` attaches every searched method at its largest size through ``autopeft.apply``
(the same modules a standalone run uses) and ``set_subnet`` is its only mutation point.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from autopeft.api import apply, count_trainable
from autopeft.config import option, parse_options
from autopeft.errors import BudgetError, ConfigError
from autopeft.inject import block_count
from autopeft.methods import REGISTRY, elastic_modules
from autopeft.optim import Masks
from autopeft.runconfig import read_yaml

SPACES = Path(__file__).resolve().parent / "search_spaces"  # named spaces; the repo's search_spaces/ links here
SEARCHABLE = ("lora", "adapter", "vpt", "kv_prompt", "ssf", "pro_tuning")
# Method options a subnet may change at run time without new weights: (method, option) -> attribute.
RUNTIME_OPTIONS = {("lora", "alpha"): "alpha", ("adapter", "scale"): "fixed_scale"}
TRAIN_HPARAMS = ("lr", "weight_decay")
Scalar = bool | int | float | str


@dataclass
class MethodSpace:
    """Per-method genes: ``sizes`` a block may take (0 = off; ssf: 0/1), fixed ``options`` for
    every candidate, and ``search``: option -> values tried (scalar values only)."""

    sizes: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    search: dict[str, list[Scalar]] = field(default_factory=dict)


@dataclass
class FloatRange:
    """A searched float hyperparameter, sampled on a log scale unless ``log`` is false."""

    low: float = option(help="The range's lower end, > 0.")
    high: float = option(help="The range's upper end, at least low.")
    log: bool = option(True, help="Sample between low and high on a log scale (true) or uniformly (false).")


@dataclass
class SearchSpace:
    """Which methods, sizes per block, options and hyperparameters a search may choose."""

    methods: dict[str, MethodSpace]
    depths: list[int] | None = None
    train: dict[str, FloatRange] = field(default_factory=dict)
    sizes_per: Literal["block", "model"] = "block"


@dataclass(frozen=True)
class SubnetConfig:
    """One candidate: per-block active sizes per method, searched method options and searched
    training hyperparameters. Stored as sorted tuples, so equal candidates hash equal."""

    sizes: tuple[tuple[str, tuple[int, ...]], ...]
    options: tuple[tuple[str, tuple[tuple[str, Scalar], ...]], ...] = ()
    train: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(
        cls,
        sizes: Mapping[str, Sequence[int]],
        options: Mapping[str, Mapping[str, Scalar]] | None = None,
        train: Mapping[str, float] | None = None,
    ) -> SubnetConfig:
        return cls(
            tuple(sorted((m, tuple(s)) for m, s in sizes.items())),
            tuple(sorted((m, tuple(sorted(o.items()))) for m, o in (options or {}).items() if o)),
            tuple(sorted((train or {}).items())),
        )

    def size(self, method: str) -> tuple[int, ...]:
        return dict(self.sizes)[method]

    def method_options(self, method: str) -> dict[str, Scalar]:
        return dict(dict(self.options).get(method, ()))

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and mappings (for YAML and CSV)."""
        return {
            "sizes": {m: list(s) for m, s in self.sizes},
            "options": {m: dict(o) for m, o in self.options},
            "train": dict(self.train),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetConfig:
        return cls.of(data["sizes"], data.get("options"), data.get("train"))


def load_space(space: str | dict[str, Any]) -> SearchSpace:
    """A named space (``search_spaces/<name>.yaml``), a YAML path, or an inline mapping."""
    if isinstance(space, dict):
        return parse_space(space, "space")
    path = Path(space) if space.endswith((".yaml", ".yml")) else SPACES / f"{space}.yaml"
    if not path.is_file():
        named = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml"))) if SPACES.is_dir() else "none found"
        raise ConfigError(f"space: {path} not found; give a YAML path or one of: {named}")
    return parse_space(read_yaml(path), str(path))


def parse_space(data: Any, where: str) -> SearchSpace:
    """A SearchSpace from a mapping (a YAML file's contents); errors name ``where`` and the key."""
    if not isinstance(data, Mapping) or not isinstance(data.get("methods"), Mapping) or not data["methods"]:
        raise ConfigError(f"{where}: needs a 'methods' mapping of method -> {{sizes: [...]}}")
    methods = {name: _parse_method(name, spec, f"{where}: methods.{name}") for name, spec in data["methods"].items()}
    rest = parse_options(_SpaceRest, {k: v for k, v in data.items() if k != "methods"}, where)
    train = {key: parse_options(FloatRange, spec, f"{where}: train.{key}") for key, spec in rest.train.items()}
    for key, spec in train.items():
        if key not in TRAIN_HPARAMS:
            raise ConfigError(f"{where}: train.{key}: unknown; allowed: {', '.join(TRAIN_HPARAMS)}")
        if not 0 < spec.low <= spec.high:
            raise ConfigError(f"{where}: train.{key}: need 0 < low <= high, got {spec.low}..{spec.high}")
    if rest.depths is not None and (not rest.depths or min(rest.depths) < 1):
        raise ConfigError(f"{where}: depths: got {rest.depths}; allowed: a non-empty list of block counts >= 1")
    return SearchSpace(methods, rest.depths, train, rest.sizes_per)


@dataclass
class _SpaceRest:
    depths: list[int] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    sizes_per: Literal["block", "model"] = "block"


def _parse_method(name: str, spec: Any, where: str) -> MethodSpace:
    if name not in SEARCHABLE:
        raise ConfigError(f"{where}: not searchable; allowed: {', '.join(SEARCHABLE)}")
    space = parse_options(MethodSpace, spec, where)
    size_option = REGISTRY[name].size_option
    if not space.sizes or min(space.sizes) < 0 or len(set(space.sizes)) != len(space.sizes):
        raise ConfigError(f"{where}.sizes: got {space.sizes}; allowed: distinct non-negative integers")
    if name == "ssf" and not set(space.sizes) <= {0, 1}:
        raise ConfigError(f"{where}.sizes: got {space.sizes}; allowed for ssf: 0 (off) and 1 (on)")
    for key in (*space.options, *space.search):
        if key == size_option:
            raise ConfigError(f"{where}: '{key}' is the size; give it as sizes")
    both = set(space.options) & set(space.search)
    if both:
        raise ConfigError(f"{where}: {sorted(both)} both fixed (options) and searched (search); keep one")
    parse_options(REGISTRY[name].options, space.options, where)  # fixed options must be valid as they are
    for key, values in space.search.items():
        if not values:
            raise ConfigError(f"{where}.search.{key}: give at least one value")
        for value in values:
            parse_options(REGISTRY[name].options, {**space.options, key: value}, f"{where}.search")
    return space


def suggest(trial: Any, space: SearchSpace, depth: int) -> SubnetConfig:
    """The define-by-run function of ``space`` for a backbone of ``depth`` blocks."""
    active = trial.suggest_categorical("depth", space.depths) if space.depths else depth
    sizes = {}
    for method, spec in space.methods.items():
        if space.sizes_per == "model":
            size = trial.suggest_categorical(f"{method}.size", spec.sizes)
            sizes[method] = [size if block < active else 0 for block in range(depth)]
        else:
            sizes[method] = [
                trial.suggest_categorical(f"{method}.{block}", spec.sizes) if block < active else 0
                for block in range(depth)
            ]
    options = {
        method: {
            option: trial.suggest_categorical(f"{method}.{option}", values) for option, values in spec.search.items()
        }
        for method, spec in space.methods.items()
    }
    train = {key: trial.suggest_float(key, r.low, r.high, log=r.log) for key, r in space.train.items()}
    return SubnetConfig.of(sizes, options, train)


def size_genes(space: SearchSpace, depth: int) -> dict[str, list[int]]:
    """The depth gene (if any) and every size gene ``suggest`` may ask for, with their values."""
    genes = {"depth": list(space.depths)} if space.depths else {}
    blocks = ["size"] if space.sizes_per == "model" else [str(b) for b in range(depth)]
    for method, spec in space.methods.items():
        genes.update({f"{method}.{block}": list(spec.sizes) for block in blocks})
    return genes


def option_genes(space: SearchSpace) -> dict[str, list[Scalar]]:
    """Every searched method option, with its values."""
    return {f"{m}.{o}": list(values) for m, spec in space.methods.items() for o, values in spec.search.items()}


def method_config(space: SearchSpace, subnet: SubnetConfig) -> dict[str, dict[str, Any]]:
    """The run-config ``methods`` section that trains ``subnet`` standalone (``linear`` when empty)."""
    methods = {}
    for method, spec in space.methods.items():
        sizes = list(subnet.size(method))
        if any(sizes):
            size = sizes[0] if len(set(sizes)) == 1 else sizes
            methods[method] = {**spec.options, **subnet.method_options(method), REGISTRY[method].size_option: size}
    return methods or {"linear": {}}


def check_shareable(space: SearchSpace) -> None:
    """Refuse what one set of shared weights cannot score: training hyperparameters and options
    that change the module structure (they need a standalone trial per candidate)."""
    if space.train:
        raise ConfigError(
            f"supernet: train {sorted(space.train)} cannot be scored with inherited supernet weights; "
            f"drop 'train' from the space (standalone trials that search them belong to `autopeft search`)"
        )
    for method, spec in space.methods.items():
        for key in spec.search:
            odd = [v for v in spec.search[key] if isinstance(v, bool) or not isinstance(v, int | float)]
            if (method, key) in RUNTIME_OPTIONS and odd:
                raise ConfigError(
                    f"supernet: {method}.search.{key}: got {odd[0]!r}; allowed: numbers (the supernet sets a "
                    f"searched {key} at run time; a learnable one changes the module structure: fix it under "
                    f"options, or search it with standalone trials in `autopeft search`)"
                )
        structural = [o for o in spec.search if (method, o) not in RUNTIME_OPTIONS]
        if structural:
            raise ConfigError(
                f"supernet: {method}.search {structural} change the module structure, so one set of shared "
                f"weights cannot serve every value; fix them under options (standalone trials that search "
                f"them belong to `autopeft search`)"
            )


def fixed_subnet(space: SearchSpace, depth: int, genes: Mapping[str, Scalar]) -> SubnetConfig:
    """The candidate with these genes; genes left out take their first value (sizes: the smallest,
    searched options: the first listed, searched hyperparameters: the low end)."""
    defaults = {name: min(values) for name, values in size_genes(space, depth).items()}
    defaults.update({name: values[0] for name, values in option_genes(space).items()})
    defaults.update({key: r.low for key, r in space.train.items()})
    import optuna

    return suggest(optuna.trial.FixedTrial({**defaults, **genes}), space, depth)


def cheapest_nonempty(space: SearchSpace, depth: int, count: Callable[[SubnetConfig], int]) -> SubnetConfig:
    """The cheapest subnet that switches at least one method on (the smallest, if it already does):
    every size gene at its least value, one raised to its least non-zero value. The first block's genes
    (or the model-wide ones) are tried first: no later block is narrower than the first. Only when none of
    them switches anything on (a method with no module in block 0, such as Pro-tuning without a prompt block
    after stage 0) are the other blocks' genes tried."""
    smallest = fixed_subnet(space, depth, {})
    if count(smallest) > 0:
        return smallest
    genes = {name: values for name, values in size_genes(space, depth).items() if any(v > 0 for v in values)}
    first = [name for name in genes if name.endswith((".0", ".size"))]
    for names in (first, [name for name in genes if name not in first]):
        grown = [fixed_subnet(space, depth, {name: min(v for v in genes[name] if v > 0)}) for name in names]
        nonempty = [(c, i) for i, c in enumerate(map(count, grown)) if c > 0]
        if nonempty:
            return grown[min(nonempty)[1]]
    raise ConfigError("space: no subnet switches a method on (every size list is [0], or no block hosts a method)")


def check_budget(budget: int, least: int, where: str = "budget") -> None:
    """The one budget check: BudgetError unless ``budget`` admits ``least``, the parameters of the
    cheapest subnet that switches a method on."""
    if budget < least:
        raise BudgetError(
            f"{where}: got {budget:,} trainable parameters; allowed: >= {least:,}, the smallest subnet "
            f"of this space that switches a method on"
        )


class Supernet:
    """Every method of ``space`` attached to ``model`` at its largest size; a subnet activates a part.

    The model is edited in place (``apply``); blocks are numbered over all stages (``inject.blocks_of``).
    """

    def __init__(self, model: nn.Module, space: SearchSpace) -> None:
        self.model, self.space, self.depth = model, space, block_count(model)
        check_shareable(space)
        methods = {m: {**s.options, REGISTRY[m].size_option: max(s.sizes)} for m, s in space.methods.items()}
        apply(model, methods)
        self.modules = {method: elastic_modules(model, method) for method in space.methods}
        self.genes = self._live_genes()
        self.subnet = self.largest()
        self.set_subnet(self.subnet)
        self._fixed = count_trainable(model) - self._elastic_count()  # trainable tensors no subnet changes

    def set_subnet(self, subnet: SubnetConfig) -> None:
        """Activate ``subnet``: sizes per block and run-time options (LoRA alpha, adapter scale)."""
        for method, spec in self.space.methods.items():
            sizes = list(subnet.size(method))
            if len(sizes) != self.depth or not set(sizes) <= set(spec.sizes) | {0}:
                raise ConfigError(f"set_subnet: {method} sizes {sizes} are not {self.depth} values from {spec.sizes}")
            options = subnet.method_options(method)
            if set(options) != set(spec.search):
                raise ConfigError(
                    f"set_subnet: {method} options {sorted(options)}; the space searches {sorted(spec.search)}"
                )
            for module in self.modules[method]:
                module.set_block_sizes(sizes)
                for key, value in options.items():
                    setattr(module, RUNTIME_OPTIONS[(method, key)], value)
        self.subnet = subnet

    def count(self, subnet: SubnetConfig) -> int:
        """Trainable parameters of ``subnet`` standalone (head excluded), without a forward pass:
        ``count_trainable`` of the model with ``subnet`` active."""
        current = self.subnet
        self.set_subnet(subnet)
        try:
            return self._fixed + self._elastic_count()
        finally:
            self.set_subnet(current)

    def _elastic_count(self) -> int:
        return sum(module.count() for modules in self.modules.values() for module in modules)

    def active_masks(self) -> Masks:
        """Per trainable tensor of the methods, the elements the active subnet uses (for MaskedAdamW)."""
        masks: Masks = {}
        for modules in self.modules.values():
            for module in modules:
                for param, index in module.active_parts():
                    mask = torch.zeros_like(param, dtype=torch.bool)
                    mask[index] = True
                    masks[param] = mask
        return masks

    def _live_genes(self) -> dict[str, list[Scalar]]:
        """Every gene that changes something, with its values: the depth gene, each method's size gene in the
        blocks where it has a module (a per-block space; Pro-tuning's prompt block, say, reads only its stage's
        first block, and a LoRA target some blocks lack has none there) or its model-wide one, and the searched
        options. ``from_genes`` sets the other size genes to their least value, so equal subnets are one subnet."""
        hosted = {f"{m}.{b}" for m, modules in self.modules.items() for module in modules for b in module.block_sizes()}
        per_block = self.space.sizes_per != "model"
        sizes = {
            name: values
            for name, values in size_genes(self.space, self.depth).items()
            if name == "depth" or not per_block or name in hosted
        }
        return {**sizes, **option_genes(self.space)}

    def suggest(self, trial: Any) -> SubnetConfig:
        """The subnet an Optuna ``trial`` asks for, over the live genes (``genes``)."""
        return self.from_genes({name: trial.suggest_categorical(name, values) for name, values in self.genes.items()})

    def sample(self, rng: random.Random) -> SubnetConfig:
        """A subnet with every live gene drawn uniformly from its values."""
        return self.from_genes({name: rng.choice(values) for name, values in self.genes.items()})

    def sample_within(self, rng: random.Random, high: int | None, low: int = 0, tries: int = 100_000) -> SubnetConfig:
        """A subnet drawn uniformly among those with ``low <= count <= high`` (rejection sampling);
        ``high`` None = no upper bound. BudgetError when ``tries`` draws find none."""
        for _ in range(tries):
            subnet = self.sample(rng)
            if low <= self.count(subnet) <= (math.inf if high is None else high):
                return subnet
        raise BudgetError(
            f"no subnet of the space has {low:,}..{high if high is None else f'{high:,}'} trainable parameters "
            f"in {tries:,} uniform draws; allowed: a range that holds subnets of this space"
        )

    def largest(self) -> SubnetConfig:
        return self._extreme(max)

    def smallest(self) -> SubnetConfig:
        return self._extreme(min)

    def largest_within(self, budget: int) -> SubnetConfig:
        """The in-budget subnet with the most parameters that growing one gene at a time finds: from the
        smallest subnet, repeatedly take the single size step up that gives the largest count still
        within ``budget`` (ties: the first gene), until no step fits."""
        genes = {**self._genes(min), **self._first_options()}
        subnet = self.from_genes(genes)
        if self.count(subnet) > budget:
            raise BudgetError(f"budget: got {budget:,}; the smallest subnet has {self.count(subnet):,} parameters")
        while True:
            steps = []
            for name, values in self._size_genes().items():
                larger = sorted(v for v in values if v > genes[name])
                if larger:
                    grown = self.from_genes({**genes, name: larger[0]})
                    steps.append((self.count(grown), name, larger[0], grown))
            fitting = [step for step in steps if step[0] <= budget]
            if not fitting:
                return subnet
            _, name, value, subnet = max(fitting, key=lambda step: step[0])
            genes[name] = value

    def check_budget(self, budget: int, where: str = "budget") -> None:
        """BudgetError unless ``budget`` admits a subnet that switches a method on."""
        check_budget(budget, self.count(self.smallest_nonempty()), where)

    def smallest_nonempty(self) -> SubnetConfig:
        return cheapest_nonempty(self.space, self.depth, self.count)

    def from_genes(self, genes: Mapping[str, Scalar]) -> SubnetConfig:
        """The subnet with these genes; size genes that change nothing (not in ``self.genes``) take their least
        value whatever ``genes`` says."""
        import optuna

        inert = {n: min(v) for n, v in size_genes(self.space, self.depth).items() if n not in self.genes}
        return suggest(optuna.trial.FixedTrial({**genes, **inert}), self.space, self.depth)

    def _extreme(self, pick) -> SubnetConfig:
        """Every size gene (and depth) at ``pick`` of its values; searched options at their first value."""
        return self.from_genes({**self._genes(pick), **self._first_options()})

    def _first_options(self) -> dict[str, Scalar]:
        return {name: values[0] for name, values in option_genes(self.space).items()}

    def _size_genes(self) -> dict[str, list[Scalar]]:
        return {name: values for name, values in self.genes.items() if name not in option_genes(self.space)}

    def _genes(self, pick) -> dict[str, int]:
        return {name: pick(values) for name, values in self._size_genes().items()}
