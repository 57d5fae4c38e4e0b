"""SSF: a per-channel scale and shift after chosen operations, foldable into them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from timm.models.swin_transformer import PatchMerging
from torch import nn

from autopeft import inject
from autopeft.backbones import BackboneInfo
from autopeft.config import per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import EVERYTHING, NOTHING, ElasticWrapper, Index, MethodSpec, register, tensor_kwargs

Site = Literal["patch_embed", "norm1", "qkv", "proj", "norm2", "fc1", "fc2", "merging", "norm"]
BLOCK_SITES = ("norm1", "qkv", "proj", "norm2", "fc1", "fc2")
MERGING_PARTS = ("norm", "reduction")  # a Swin patch merging: LayerNorm(4c), then Linear(4c, 2c)
ALL_SITES = ("patch_embed", *BLOCK_SITES, "merging", "norm")


@dataclass
class SSFOptions:
    enabled: bool | int | list[bool | int] = 1
    sites: list[Site] = field(default_factory=lambda: list(ALL_SITES))

    def __post_init__(self) -> None:
        if not self.sites:
            raise ConfigError(f"ssf.sites: empty list; allowed: some of {', '.join(ALL_SITES)}")


class ScaleShift(ElasticWrapper):
    """``y = gamma * base(x) + beta`` per channel; size 1 = on, 0 = off.

    ``channel_dim`` is -1 for Linear/LayerNorm outputs and 1 for a Conv2d (NCHW) output.
    A wrapper with ``block=None`` (patch embedding, final norm) is on while any block is.
    """

    method = "ssf"

    def __init__(self, base: nn.Module, width: int, block: int | None, channel_dim: int = -1) -> None:
        super().__init__(base, block, 1)
        self.channel_dim = channel_dim
        kw = tensor_kwargs(base)
        self.gamma = nn.Parameter(torch.empty(width, **kw).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.empty(width, **kw).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.size == 0:
            return y
        if self.channel_dim == 1:
            return torch.addcmul(self.beta[:, None, None], y, self.gamma[:, None, None])
        return torch.addcmul(self.beta, y, self.gamma)

    def set_block_sizes(self, sizes: list[int]) -> None:
        self.size = sizes[self.block] if self.block is not None else int(any(sizes))

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        return [(p, EVERYTHING if self.size else NOTHING) for p in (self.gamma, self.beta)]

    def count(self) -> int:
        return 2 * self.gamma.numel() * self.size

    @torch.no_grad()
    def merged_module(self) -> nn.Module:
        """The wrapped Linear / LayerNorm / Conv2d with gamma and beta folded in."""
        base = self.base
        if self.size == 0:
            return base
        if isinstance(base, nn.LayerNorm) and not base.elementwise_affine:
            raise ConfigError("ssf: cannot merge into a LayerNorm without affine parameters")
        if not isinstance(base, (nn.Linear, nn.LayerNorm, nn.Conv2d)):
            raise ConfigError(f"ssf: cannot merge into {type(base).__name__}")
        shape = (-1,) + (1,) * (base.weight.dim() - 1)
        base.weight.mul_(self.gamma.view(shape))
        if base.bias is None:
            base.bias = nn.Parameter(self.beta.detach().clone(), requires_grad=False)
        else:
            base.bias.mul_(self.gamma).add_(self.beta)
        return base


class QKVScaleShift(ScaleShift):
    """SSF after the fused qkv projection of an attention that reads ``qkv.weight`` directly (EVA, BEiT:
    ``F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias))``, which bypasses this module). While on, the
    attention takes timm's own ``qkv_bias_separate`` path (``inject.call_qkv_module``): it calls this module,
    then adds its q / v biases, so the scale and shift act on the projection before those biases. While off,
    timm's direct read runs unchanged and sees :attr:`weight`, the wrapped module's (with LoRA's update).
    Merging scales the weight and gives the Linear the shift as its bias; the attention keeps calling it."""

    @property
    def calls_qkv(self) -> bool:
        return self.size > 0

    @property
    def weight(self) -> torch.Tensor:
        if self.size:
            raise RuntimeError("ssf: qkv with SSF on has no single weight; the attention calls the module instead")
        return self.base.weight


def output_width(module: nn.Module, site: str) -> int:
    """Channels a site's module puts out (a packed SwiGLU fc1 puts out twice the MLP width)."""
    base = inject.unwrapped(module)
    if isinstance(base, nn.Linear):
        return base.out_features
    if isinstance(base, nn.LayerNorm):
        return base.normalized_shape[-1]
    if isinstance(base, nn.Conv2d):
        return base.out_channels
    raise ConfigError(f"ssf: site '{site}' is {type(base).__name__}; allowed: a Linear, a LayerNorm or a Conv2d")


def _patch_embed_site(model: nn.Module) -> tuple[nn.Module, str, int]:
    """After the patch embedding's norm when it has one, else after its projection (a conv, also behind
    a CNN stem in hybrid ViTs)."""
    patch_embed = model.patch_embed
    if isinstance(getattr(patch_embed, "norm", None), nn.LayerNorm):
        return patch_embed, "norm", -1
    return patch_embed, "proj", 1


def _final_norm_site(model: nn.Module) -> tuple[nn.Module, str]:
    for attr in ("norm", "fc_norm"):
        if isinstance(getattr(model, attr, None), nn.LayerNorm):
            return model, attr
    raise ConfigError("ssf: site 'norm' needs a final LayerNorm (norm or fc_norm); this backbone has none")


def _attach_merging(model: nn.Module, enabled: list[int]) -> None:
    """After the norm and the reduction of each patch merging that opens a stage (Swin), on with the stage's
    first block; backbones without patch merging have nothing here."""
    first = 0
    for stage in getattr(model, "layers", ()):
        merging = getattr(stage, "downsample", None)
        if isinstance(merging, PatchMerging) and enabled[first]:
            for attr in MERGING_PARTS:
                inject.wrap(merging, attr, ScaleShift, output_width(getattr(merging, attr), "merging"), first)
        first += len(getattr(stage, "blocks", ()))


def attach(model: nn.Module, opts: SSFOptions, info: BackboneInfo) -> None:
    flags = [int(f) for f in opts.enabled] if isinstance(opts.enabled, list) else int(opts.enabled)
    enabled = per_block(flags, info.depth, "ssf.enabled", maximum=1)
    for index, block in inject.blocks_of(model):
        if not enabled[index]:
            continue
        for site in BLOCK_SITES:
            if site not in opts.sites:
                continue
            for parent, attr in inject.locate_all(block, site, "ssf", index):  # split sites: each part
                width = output_width(getattr(parent, attr), site)
                if site == "qkv" and inject.reads_qkv_weight(parent):
                    inject.wrap(parent, attr, QKVScaleShift, width, index)
                    inject.call_qkv_module(parent)
                else:
                    inject.wrap(parent, attr, ScaleShift, width, index)
    if "merging" in opts.sites:
        _attach_merging(model, enabled)
    if not any(enabled):
        return
    if "patch_embed" in opts.sites:
        parent, attr, channel_dim = _patch_embed_site(model)
        inject.wrap(parent, attr, ScaleShift, output_width(getattr(parent, attr), "patch_embed"), None, channel_dim)
    if "norm" in opts.sites:
        parent, attr = _final_norm_site(model)
        inject.wrap(parent, attr, ScaleShift, output_width(getattr(parent, attr), "norm"), None)


SPEC = register(
    MethodSpec(
        name="ssf",
        options=SSFOptions,
        attach=attach,
        order=1,
        size_option="enabled",
        mergeable=True,
    )
)
