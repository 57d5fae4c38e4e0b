"""LoRA: W' = W + (alpha / r) B A on chosen Linears (q/k/v slices of timm's fused qkv) and CNN convolutions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn

from autopeft import inject
from autopeft.backbones import TRANSFORMER, BackboneInfo
from autopeft.config import option, per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import (
    ElasticWrapper,
    Index,
    MethodSpec,
    check_family_choices,
    register,
    tensor_kwargs,
)

QKV_PARTS = ("q", "k", "v")
TRANSFORMER_TARGETS = (*QKV_PARTS, "qkv", "proj", "fc1", "fc2")
# Per CNN family: the layers a target names (ConvNeXt's MLP Linears or 1x1 convolutions, ResNet's convolutions,
# EfficientNet's and MobileNetV3's pointwise convolutions) and the default targets.
CNN_TARGETS = {
    "convnext": ("fc1", "fc2"),
    "resnet": ("conv1", "conv2", "conv3"),
    "efficientnet": ("conv_pw", "conv_pwl"),
}
CNN_DEFAULTS = {"convnext": ["fc1", "fc2"], "resnet": ["conv1", "conv2"], "efficientnet": ["conv_pw", "conv_pwl"]}


@dataclass
class LoRAOptions:
    """LoRA's options. Which targets a backbone has depends on its family (``TRANSFORMER_TARGETS``,
    ``CNN_TARGETS``), so they are checked where it is known."""

    rank: int | list[int] = option(
        8,
        help="The rank r of each low-rank update: one integer for every block, or a list with one entry per block; "
        "0 leaves a block without LoRA.",
    )
    alpha: float | None = option(
        None,
        help="The scaling numerator: an update is scaled by alpha / rank (a positive number). null: scale 1, as "
        "alpha = rank.",
    )
    targets: list[str] | None = option(
        None,
        help="The layers adapted in each block. Transformers: q, k, v (slices of the fused qkv), qkv (the whole "
        "fused projection, not with q/k/v), proj, fc1, fc2; CNNs: fc1, fc2 (convnext), conv1, conv2, conv3 "
        "(resnet), conv_pw, conv_pwl (efficientnet, mobilenetv3). null: the family's default (q, v; fc1, fc2; "
        "conv1, conv2; conv_pw, conv_pwl).",
    )
    dropout: float = option(
        0.0,
        help="Dropout probability on LoRA's input, 0 <= dropout < 1 (0: none); q, k, v and qkv targets on a "
        "fused qkv with separate q/v biases (EVA, BEiT) take 0 only.",
    )

    def __post_init__(self) -> None:
        targets = self.targets if self.targets is not None else []
        if self.targets is not None and not targets:
            raise ConfigError("lora.targets: empty list; allowed: some of q, k, v, qkv, proj, fc1, fc2")
        if len(set(targets)) != len(targets):
            raise ConfigError(f"lora.targets: {self.targets} repeats a target")
        if "qkv" in targets and set(QKV_PARTS) & set(targets):
            raise ConfigError("lora.targets: 'qkv' (fused) cannot be combined with 'q', 'k' or 'v'")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"lora.alpha: got {self.alpha}; allowed: a positive number or null (= rank)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: got {self.dropout}; allowed: 0 <= dropout < 1")


class LoRALinear(ElasticWrapper):
    """A Linear plus low-rank updates on slices of its output (one slice per target part).

    ``parts`` maps a part name to its output rows, e.g. ``{"q": (0, d), "v": (2d, 3d)}``.
    Active rank ``r`` uses ``A[:r]`` and ``B[:, :r]``; the scale is ``alpha / r`` (1 when
    ``alpha`` is None).
    """

    method = "lora"

    def __init__(
        self,
        base: nn.Linear,
        parts: dict[str, tuple[int, int]],
        block: int,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(base, block, rank)
        self.parts = dict(parts)
        self.alpha = alpha
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = tensor_kwargs(base)
        self.fan_in = base.weight[0].numel()  # a Linear's input width; a convolution's in_channels x kernel area
        self.lora_A = nn.ParameterDict({p: nn.Parameter(torch.empty(rank, self.fan_in, **kw)) for p in parts})
        self.lora_B = nn.ParameterDict(
            {p: nn.Parameter(torch.zeros(hi - lo, rank, **kw)) for p, (lo, hi) in parts.items()}
        )
        for weight in self.lora_A.values():
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.merged = False
        # While merged: base.weight as it was before merge(), for unmerge() (moves with .to(); not saved).
        self.register_buffer("unmerged_weight", None, persistent=False)

    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.size

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(down, up)`` of the active rank with every part stacked: update = ``up @ down``.

        ``down`` is ``(parts * r, in)``; ``up`` is ``(out, parts * r)``, block-structured so
        each part writes only its own output rows, and carries the ``alpha / r`` scale.
        """
        r, scale, out_features = self.size, self.scale(), self.base.weight.shape[0]
        down = torch.cat([a[:r] for a in self.lora_A.values()])
        if len(self.parts) == 1 and next(iter(self.parts.values())) == (0, out_features):
            up = next(iter(self.lora_B.values()))[:, :r]
        else:
            up = down.new_zeros(out_features, down.shape[0])
            for i, (part, (lo, hi)) in enumerate(self.parts.items()):
                up[lo:hi, i * r : (i + 1) * r] = self.lora_B[part][:, :r]
        return down, up if scale == 1.0 else up * scale

    @property
    def weight(self) -> torch.Tensor:
        """The weight a direct read sees: EVA's and BEiT's attention call ``F.linear(x, qkv.weight, bias)``
        instead of the module, so the update reaches them here. ``base.weight`` itself at size 0 or while
        merged (bit for bit the plain layer); else ``base.weight`` plus the update of the active rank, the value
        :meth:`merge` folds in. The module's own forward (low-rank path, dropout) does not use it."""
        if self.size == 0 or self.merged:
            return self.base.weight
        return self.base.weight + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.size == 0 or self.merged:
            return out
        return out + self.low_rank(self.dropout(x), *self.factors())

    def low_rank(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The update's output for input ``x``: ``up @ down`` applied as the wrapped layer applies its weight."""
        return F.linear(F.linear(x, down), up)

    def delta_weight(self) -> torch.Tensor:
        """The full weight update of the active rank, shaped as the wrapped layer's weight."""
        if self.size == 0:
            return torch.zeros_like(self.base.weight)
        down, up = self.factors()
        return (up @ down).view_as(self.base.weight)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update of the active rank into ``base.weight`` (reversible with :meth:`unmerge`).

        While merged, the forward pass is ``base`` alone: a new active rank (``.size``) or new factor
        values take effect after :meth:`unmerge`."""
        if not self.merged:
            self.unmerged_weight = self.base.weight.detach().clone()
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put ``base.weight`` back bit for bit as it was before :meth:`merge`, whatever the active
        rank became in between (subtracting the update would round, and use the current rank)."""
        if self.merged:
            self.base.weight.copy_(self.unmerged_weight)
            self.unmerged_weight = None
            self.merged = False

    @torch.no_grad()
    def merged_module(self) -> nn.Linear:
        """The base Linear with the update folded in, for permanent merging (no way back)."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True
        return self.base

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        rows, cols = (slice(0, self.size),), (slice(None), slice(0, self.size))
        return [(a, rows) for a in self.lora_A.values()] + [(b, cols) for b in self.lora_B.values()]

    def count(self) -> int:
        return self.size * sum(self.fan_in + hi - lo for lo, hi in self.parts.values())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parts={list(self.parts)}, alpha={self.alpha}"


class LoRAConv(LoRALinear):
    """LoRA on a Conv2d with one group: ``A`` is a convolution to ``r`` channels with the layer's kernel, stride,
    padding and dilation (TensorFlow 'same' padding included), ``B`` a 1x1 convolution, so ``W + (alpha/r) B A``
    (``A`` reshaped to the kernel) merges exactly. On a 1x1 convolution, a Linear over channels, this is LoRA on
    that Linear: ``r * (in + out)`` parameters; ``r * (in * k * k + out)`` for a k x k kernel.

    Without dropout, training runs one convolution with the updated weight (:attr:`weight`) instead of the layer
    plus the two low-rank convolutions and a sum: on the CPU that is cheaper (the weight gradient of a convolution
    costs less than the extra passes over the feature maps), and the values are equal up to rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 0 or self.merged or not isinstance(self.dropout, nn.Identity):
            return super().forward(x)
        return self.convolve(x, self.weight, self.base.bias)

    def low_rank(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        z = self.convolve(x, down.view(-1, *self.base.weight.shape[1:]), None)
        return F.conv2d(z, up[:, :, None, None])

    def convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x`` convolved with ``weight`` as the wrapped layer convolves (stride, padding, dilation; TensorFlow
        'same' padding included)."""
        conv = self.base
        padding = conv.padding
        if isinstance(conv, Conv2dSame):
            x, padding = pad_same(x, conv.kernel_size, conv.stride, conv.dilation), 0
        return F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation)


def _parts(target_group: list[str], out_features: int) -> dict[str, tuple[int, int]]:
    if target_group == ["qkv"]:
        return {"qkv": (0, out_features)}
    third = out_features // 3
    return {p: (i * third, (i + 1) * third) for i, p in enumerate(QKV_PARTS) if p in target_group}


def _cnn_layer(block: nn.Module, target: str) -> tuple[nn.Module, str] | None:
    """``(parent, attribute)`` of ``target`` in a CNN block, None when this kind of block has none."""
    *path, attr = inject.BLOCK_SITES[target]
    parent = block
    for step in path:
        parent = inject.unwrapped(getattr(parent, step))
    return (parent, attr) if isinstance(getattr(parent, attr, None), nn.Module) else None


def _lora_wrapper(layer: nn.Module, target: str, index: int) -> type[LoRALinear]:
    """LoRALinear for a Linear, LoRAConv for a convolution with one group (zero padding); else one line."""
    if isinstance(layer, nn.Linear):
        return LoRALinear
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros":
        return LoRAConv
    groups = f" with {layer.groups} groups" if isinstance(layer, nn.Conv2d) else ""
    raise ConfigError(
        f"lora: target '{target}' in block {index} is a {type(layer).__name__}{groups}; allowed: a Linear or a "
        f"convolution with one group and zero padding"
    )


def _attach_cnn(model: nn.Module, opts: LoRAOptions, ranks: list[int], family: str) -> None:
    """LoRA on each target layer of every block with a rank; a target a block kind lacks is skipped there
    (EfficientNet's depthwise-separable block has no conv_pwl, ResNet's BasicBlock no conv3), one that no block
    of the backbone has is refused."""
    found = {index: {t: _cnn_layer(block, t) for t in CNN_TARGETS[family]} for index, block in inject.blocks_of(model)}
    present = [t for t in CNN_TARGETS[family] if any(layers[t] for layers in found.values())]
    absent = [t for t in opts.targets if t not in present]
    if absent:
        raise ConfigError(
            f"lora.targets: no block of this {family} backbone has '{absent[0]}'; allowed here: {', '.join(present)}"
        )
    for index, layers in found.items():
        for target in opts.targets:
            place = layers[target]
            if ranks[index] and place is not None:
                wrapper = _lora_wrapper(getattr(*place), target, index)
                parts = {target: (0, getattr(*place).weight.shape[0])}
                inject.wrap(*place, wrapper, parts, index, ranks[index], opts.alpha, opts.dropout)


def attach(model: nn.Module, opts: LoRAOptions, info: BackboneInfo) -> None:
    ranks = per_block(opts.rank, info.depth, "lora.rank")
    allowed = TRANSFORMER_TARGETS if info.family == TRANSFORMER else CNN_TARGETS[info.family]
    check_family_choices("lora.targets", "a target", opts.targets, allowed, info.family)
    if info.family != TRANSFORMER:
        _attach_cnn(model, opts, ranks, info.family)
        return
    qkv_group = [t for t in opts.targets if t in (*QKV_PARTS, "qkv")]
    sites = ([("qkv", qkv_group)] if qkv_group else []) + [(t, [t]) for t in opts.targets if t not in qkv_group]
    for index, block in inject.blocks_of(model):
        if ranks[index] == 0:
            continue
        for site, group in sites:
            for parent, attr, parts in _targets(block, site, group, index, opts):
                inject.wrap(parent, attr, LoRALinear, parts, index, ranks[index], opts.alpha, opts.dropout)


def _targets(
    block: nn.Module, site: str, group: list[str], index: int, opts: LoRAOptions
) -> list[tuple[nn.Module, str, dict[str, tuple[int, int]]]]:
    """``(parent, attribute, parts)`` of each Linear that ``site`` adapts in ``block``: the fused ``qkv``
    with the row slices of ``group``; EVA's separate ``q_proj`` / ``k_proj`` / ``v_proj`` one per part; a
    SwiGLU's ``fc1_g`` and ``fc1_x`` both for ``fc1``; else the site's one Linear."""
    found = inject.locate_all(block, site, "lora", index)
    for parent, attr in found:
        linear = getattr(parent, attr)
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"lora: target '{site}' in block {index} is {type(linear).__name__}, not a Linear")
    if site != "qkv":
        return [(parent, attr, {site: (0, getattr(parent, attr).out_features)}) for parent, attr in found]
    if len(found) > 1:  # separate q, k and v projections
        if group == ["qkv"]:
            raise ConfigError(
                f"lora.targets: 'qkv' (fused) in block {index}: {type(found[0][0]).__name__} has separate "
                f"q_proj, k_proj and v_proj; allowed: some of q, k, v (one update per projection)"
            )
        by_part = dict(zip(QKV_PARTS, found, strict=True))
        return [(*by_part[part], {part: (0, getattr(*by_part[part]).out_features)}) for part in group]
    parent, attr = found[0]
    if opts.dropout > 0 and inject.reads_qkv_weight(parent):
        raise ConfigError(
            f"lora.dropout: got {opts.dropout} with targets {group}; {type(parent).__name__} in block {index} "
            f"reads qkv.weight directly (F.linear with its own q/v biases), where no dropout can reach LoRA's "
            f"input; allowed there: dropout 0, or targets proj, fc1, fc2 only"
        )
    return [(parent, attr, _parts(group, getattr(parent, attr).out_features))]


SPEC = register(
    MethodSpec(
        name="lora",
        options=LoRAOptions,
        attach=attach,
        order=0,
        size_option="rank",
        identity_at_init=True,
        mergeable=True,
        cnn=True,
        family_defaults={
            TRANSFORMER: {"targets": ["q", "v"]},
            **{family: {"targets": targets} for family, targets in CNN_DEFAULTS.items()},
        },
    )
)
