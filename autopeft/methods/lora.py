"""LoRA: W' = W + (alpha / r) B A on chosen Linears, with q/k/v slices of timm's fused qkv."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo
from autopeft.config import per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import ElasticWrapper, Index, MethodSpec, register, tensor_kwargs

Target = Literal["q", "k", "v", "qkv", "proj", "fc1", "fc2"]
QKV_PARTS = ("q", "k", "v")


@dataclass
class LoRAOptions:
    rank: int | list[int] = 8
    alpha: float | None = None
    targets: list[Target] = field(default_factory=lambda: ["q", "v"])
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError("lora.targets: empty list; allowed: some of q, k, v, qkv, proj, fc1, fc2")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"lora.targets: {self.targets} repeats a target")
        if "qkv" in self.targets and set(QKV_PARTS) & set(self.targets):
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
        self.lora_A = nn.ParameterDict({p: nn.Parameter(torch.empty(rank, base.in_features, **kw)) for p in parts})
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
        r, scale = self.size, self.scale()
        down = torch.cat([a[:r] for a in self.lora_A.values()])
        if len(self.parts) == 1 and next(iter(self.parts.values())) == (0, self.base.out_features):
            up = next(iter(self.lora_B.values()))[:, :r]
        else:
            up = down.new_zeros(self.base.out_features, down.shape[0])
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
        down, up = self.factors()
        return out + F.linear(F.linear(self.dropout(x), down), up)

    def delta_weight(self) -> torch.Tensor:
        """The full ``(out, in)`` weight update of the active rank."""
        if self.size == 0:
            return torch.zeros_like(self.base.weight)
        down, up = self.factors()
        return up @ down

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
        in_features = self.base.in_features
        return self.size * sum(in_features + hi - lo for lo, hi in self.parts.values())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parts={list(self.parts)}, alpha={self.alpha}"


def _parts(target_group: list[str], out_features: int) -> dict[str, tuple[int, int]]:
    if target_group == ["qkv"]:
        return {"qkv": (0, out_features)}
    third = out_features // 3
    return {p: (i * third, (i + 1) * third) for i, p in enumerate(QKV_PARTS) if p in target_group}


def attach(model: nn.Module, opts: LoRAOptions, info: BackboneInfo) -> None:
    ranks = per_block(opts.rank, info.depth, "lora.rank")
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
    )
)
