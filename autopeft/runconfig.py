"""The run config: one typed schema for backbone, data, methods, training and seed, read from YAML."""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autopeft.backbones import family_of_name
from autopeft.config import check_type, parse_options
from autopeft.data import DataConfig
from autopeft.errors import ConfigError
from autopeft.methods import REGISTRY
from autopeft.methods.base import with_family_defaults
from autopeft.train import TrainConfig


@dataclass
class BackboneConfig:
    """``pretrained``: the shipped weights (demo backbones), ``checkpoint`` if given, else timm's Hub
    download; ``false`` starts from random weights. ``options`` go to ``timm.create_model``."""

    name: str = "vit_demo_fmnist"
    checkpoint: str | None = None
    pretrained: bool = True
    drop_path: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.checkpoint and not self.pretrained:
            raise ConfigError("backbone: checkpoint is set but pretrained is false; drop one of them")


@dataclass
class RunConfig:
    """Everything one training run needs; YAML keys equal these field names.

    ``init``: a saved adapter folder to start from (``autopeft prune`` writes one): its weights, head
    included, and its prompts' segment masks; its methods must equal ``methods``.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(name="digits"))
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {"lora": {}})
    train: TrainConfig = field(default_factory=TrainConfig)
    final: bool = False
    test: bool = True
    seed: int = 0
    init: str | None = None

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
