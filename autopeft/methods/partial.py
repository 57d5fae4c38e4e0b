"""Baselines that unfreeze existing backbone tensors: bitfit, ln_tune, linear (head only), full."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from autopeft.backbones import BackboneInfo
from autopeft.methods.base import MethodSpec, register


@dataclass
class NoOptions:
    """These methods take no options."""


BIAS_NAMES = ("bias", "q_bias", "v_bias")  # EVA's and BEiT's attention keep q / v biases apart from qkv (k has none)


def _biases(model: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in BIAS_NAMES]


def _norms(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters of every LayerNorm (with timm's LayerNorm2d) and BatchNorm (with BatchNormAct2d)."""
    norms = (nn.LayerNorm, _BatchNorm)
    return [p for m in model.modules() if isinstance(m, norms) for p in m.parameters(recurse=False)]


def _nothing(model: nn.Module) -> list[nn.Parameter]:
    return []


def _everything(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())


def _attach_nothing(model: nn.Module, opts: NoOptions, info: BackboneInfo | None) -> None:
    """These baselines add no modules; ``trainable`` selects what they unfreeze."""


for order, (name, select) in enumerate(
    [("bitfit", _biases), ("ln_tune", _norms), ("linear", _nothing), ("full", _everything)], start=10
):
    register(
        MethodSpec(
            name=name,
            options=NoOptions,
            attach=_attach_nothing,
            order=order,
            identity_at_init=True,
            needs_vit=False,
            trainable=select,
        )
    )
