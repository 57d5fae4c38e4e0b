"""The run config: one typed schema for backbone, data, methods, training and seed, read from YAML."""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from autopeft.backbones import family_of_name
from autopeft.config import check_type, option, parse_options
from autopeft.data import DataConfig
from autopeft.errors import ConfigError
from autopeft.methods import REGISTRY
from autopeft.methods.base import with_family_defaults
from autopeft.train import TrainConfig


@dataclass
class BackboneConfig:
    """The pretrained model the methods are applied to: its name, its weights and its timm options."""

    name: str = option(
        "vit_demo_fmnist",
        help="A timm model name, or a backbone built into autopeft (vit_demo_fmnist, swin_demo, "
        "efficientnet_lite0_imagenet).",
    )
    checkpoint: str | None = option(
        None,
        help="A local weights file (.safetensors, .pth/.pt or .npz) loaded into the backbone in place of the shipped "
        "or Hub weights; needs pretrained: true. null: no file.",
    )
    pretrained: bool = option(
        True,
        help="Start from trained weights: checkpoint if given, else the weights shipped with a built-in backbone, "
        "else timm's Hugging Face Hub download; false starts from random weights (seeded by the run's seed).",
    )
    drop_path: float = option(
        0.0, help="Stochastic depth rate (timm's drop_path_rate) while training, from 0 to 1; 0 turns it off."
    )
    options: dict[str, Any] = option(
        factory=dict,
        help="Extra keyword arguments for timm.create_model (e.g. img_size); for a built-in backbone they override "
        "its architecture's settings.",
    )

    def __post_init__(self) -> None:
        if self.checkpoint and not self.pretrained:
            raise ConfigError("backbone: checkpoint is set but pretrained is false; drop one of them")


@dataclass
class RunConfig:
    """Everything one training run needs; YAML keys equal these field names."""

    backbone: BackboneConfig = option(factory=BackboneConfig, help="The backbone section: model and weights.")
    data: DataConfig = option(
        factory=lambda: DataConfig(name="digits"), help="The data section: which task's images to train on."
    )
    methods: dict[str, dict[str, Any]] = option(
        factory=lambda: {"lora": {}},
        help="The PEFT methods applied together, method name -> its options (autopeft config methods lists them); "
        "options left out take their defaults for the backbone's family.",
    )
    train: TrainConfig = option(factory=TrainConfig, help="The train section: optimizer, schedule and precision.")
    final: bool = option(
        False,
        help="Train on train + val together and score no val (a final model); false trains on train and scores val "
        "after every epoch.",
    )
    test: bool = option(
        True,
        help="Score the test split once after the last epoch (never for a run stopped early); false never reads it.",
    )
    seed: int = option(
        0,
        help="Seed of the model's initialisation (head, method weights, a random-init backbone) and of the batch order "
        "and augmentation; the data has its own data.seed.",
    )
    init: str | None = option(
        None,
        help="A saved adapter folder to start from (autopeft prune writes one): its weights, head included, and its "
        "prompts' segment masks; its methods must equal methods. null: start from fresh method weights.",
    )

    def __post_init__(self) -> None:
        # every option spelled out, as saved and reported (the backbone family's defaults filled in)
        self.methods = _parse_methods(self.methods, family_of_name(self.backbone.name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SECTIONS = {"backbone": BackboneConfig, "data": DataConfig, "train": TrainConfig}


def parse_run_config(data: Any, where: str) -> RunConfig:
    """Build a RunConfig from a mapping; every error starts with ``where`` (the file) and names the key."""
    try:
        return _parse(data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def _parse(data: Any) -> RunConfig:
    keys = list(RunConfig.__dataclass_fields__)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping with keys {', '.join(keys)}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}'; allowed: {', '.join(keys)}")
    values: dict[str, Any] = {key: parse_options(cls, data[key], key) for key, cls in SECTIONS.items() if key in data}
    if "methods" in data:
        values["methods"] = data["methods"]
    for key, tp in (("final", bool), ("test", bool), ("seed", int), ("init", str | None)):
        if key in data:
            values[key] = check_type(data[key], tp, key)
    return RunConfig(**values)


def _parse_methods(methods: Any, family: str) -> dict[str, dict[str, Any]]:
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"methods: expected a mapping of method -> options; allowed: {', '.join(REGISTRY)}")
    parsed = {}
    for name, options in methods.items():
        if name not in REGISTRY:
            raise ConfigError(f"methods: unknown method '{name}'; allowed: {', '.join(REGISTRY)}")
        opts = parse_options(REGISTRY[name].options, options, f"methods.{name}")
        parsed[name] = asdict(with_family_defaults(REGISTRY[name], opts, family))
    return parsed


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    return parse_run_config(apply_overrides(read_yaml(path), overrides), str(path))


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats that YAML 1.1 reads as strings: an exponent
    without a dot or without a sign (``3e-3``, ``1E-4``, ``5e2``, ``1.5e3``). Integers stay
    integers, other strings stay strings; ``.inf`` and ``.nan`` as PyYAML reads them."""


class YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes strings ``YamlLoader`` would read as floats (``'3e-3'``)."""


for _cls in (YamlLoader, YamlDumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )


def load_yaml(text: str) -> Any:
    """Parse YAML text from a user (a file or a ``--set`` value) with ``YamlLoader``; raises yaml.YAMLError."""
    return yaml.load(text, Loader=YamlLoader)  # safe: YamlLoader is a SafeLoader subclass


def dump_yaml(data: Any) -> str:
    """YAML text that ``load_yaml`` reads back as ``data`` (keys in insertion order)."""
    return yaml.dump(data, Dumper=YamlDumper, sort_keys=False)


def yaml_inline(data: Any) -> str:
    """``data`` on one line in YAML's spelling (``{rank: 8, alpha: null, targets: [q, v]}``), as a config holds it."""
    listed = yaml.dump([data], Dumper=YamlDumper, sort_keys=False, default_flow_style=True, width=10**6).strip()
    return listed[1:-1]  # inside a list, so that a lone scalar gets no document end marker


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents ({} when empty); a missing file or bad YAML is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from err


def apply_overrides(data: Any, overrides: list[str]) -> Any:
    """``a.b=c`` sets ``data["a"]["b"] = load_yaml(c)``, creating mappings on the way."""
    data = copy.deepcopy(data) if isinstance(data, dict) else {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected key=value, e.g. train.lr=0.001")
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {override!r}: '{parent}' is not a mapping")
        try:
            node[leaf] = load_yaml(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", err)
            raise ConfigError(f"--set {override!r}: the value is not valid YAML ({problem})") from err
    return data


def dump_run_config(config: RunConfig) -> str:
    return dump_yaml(config.to_dict())
