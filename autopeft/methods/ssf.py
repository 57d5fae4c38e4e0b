"""SSF: a per-channel scale and shift after chosen operations, foldable into them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, LayerNorm2d
from timm.models.swin_transformer import PatchMerging
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from autopeft import inject
from autopeft.backbones import CNN_FAMILIES, TRANSFORMER, BackboneInfo
from autopeft.config import option, per_block
from autopeft.errors import ConfigError
from autopeft.methods.base import (
    EVERYTHING,
    NOTHING,
    ElasticWrapper,
    Index,
    MethodSpec,
    check_family_choices,
    register,
    tensor_kwargs,
)

BLOCK_SITES = ("norm1", "qkv", "proj", "norm2", "fc1", "fc2")
MERGING_PARTS = ("norm", "reduction")  # a Swin patch merging: LayerNorm(4c), then Linear(4c, 2c)
ALL_SITES = ("patch_embed", *BLOCK_SITES, "merging", "norm")  # a transformer's
CNN_SITES = ("stem", "convs", "norms", "downsample", "head")
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)
NORMS = (nn.LayerNorm, _BatchNorm)  # with timm's LayerNorm2d and BatchNormAct2d
CNN_SITE_KINDS = {"convs": WEIGHT_LAYERS, "norms": NORMS}


@dataclass
class SSFOptions:
    """SSF's options. Which sites a backbone has depends on its family (``ALL_SITES``, ``CNN_SITES``), so they
    are checked where it is known."""

    enabled: bool | int | list[bool | int] = option(
        1,
        help="Whether SSF is on in a block: 1 or true (on), 0 or false (off), for every block or as a list with one "
        "entry per block. patch_embed, norm, stem and head are on while any block is; merging and downsample "
        "with the first block of the stage they open.",
    )
    sites: list[str] | None = option(
        None,
        help="The operations followed by a scale and shift. Transformers: patch_embed, norm1, qkv, proj, norm2, "
        "fc1, fc2, merging (Swin's patch merging), norm (the final norm); CNNs: stem, convs, norms, downsample, "
        "head. null: every site of the backbone's family.",
    )

    def __post_init__(self) -> None:
        if self.sites is not None and not self.sites:
            raise ConfigError(f"ssf.sites: empty list; allowed: some of {', '.join(ALL_SITES + CNN_SITES)}")


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
        # A convolution's SSF whose output feeds straight into a BatchNorm's SSF (``pair_with_norms``): while that
        # norm is frozen, the norm applies both in its one batch_norm call. Plain attributes, not submodules.
        object.__setattr__(self, "feeds", None)  # on the convolution's wrapper: the norm's wrapper
        object.__setattr__(self, "fed_by", None)  # on the norm's wrapper: the convolution's wrapper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size and _frozen_batch_norm(self.base):
            return self.scaled_batch_norm(x)
        y = self.base(x)
        return self.scale_shift(y) if self.size and not self.deferred() else y

    def deferred(self) -> bool:
        """Whether the frozen BatchNorm this output feeds applies this scale and shift (``feeds``)."""
        return self.feeds is not None and self.feeds.size > 0 and _frozen_batch_norm(self.feeds.base)

    def scaled_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        """A BatchNorm on its running statistics followed by the scale and shift, as one ``batch_norm`` call with
        gamma and beta folded into its affine (``weight * gamma``, ``bias * gamma + beta``): one pass over the
        feature map instead of two, the same values up to rounding. When the convolution feeding it defers its
        own scale g1 and shift b1 (``fed_by``), they fold in too: ``BN(g1 * c + b1)`` is ``c`` normalised with
        the same statistics, its weight times g1 and its bias plus ``weight * (b1 + (g1 - 1) * mean) / std``."""
        norm = self.base
        weight, bias = norm.weight, norm.bias
        source = self.fed_by
        if source is not None and source.size:
            unit = norm.running_mean.new_ones(())
            inv_std = torch.rsqrt(norm.running_var + norm.eps) * (unit if weight is None else weight)
            shift = torch.addcmul(source.beta, source.gamma - 1, norm.running_mean) * inv_std
            bias = shift if bias is None else bias + shift
            weight = source.gamma if weight is None else weight * source.gamma
        weight = self.gamma if weight is None else weight * self.gamma
        bias = self.beta if bias is None else torch.addcmul(self.beta, bias, self.gamma)
        return F.batch_norm(x, norm.running_mean, norm.running_var, weight, bias, False, 0.0, norm.eps)

    def scale_shift(self, y: torch.Tensor) -> torch.Tensor:
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
        """The wrapped Linear / Conv2d / LayerNorm / BatchNorm with gamma and beta folded in (a norm's affine)."""
        base = self.base
        if self.size == 0:
            return base
        if not isinstance(base, WEIGHT_LAYERS + NORMS):
            raise ConfigError(f"ssf: cannot merge into {type(base).__name__}")
        if base.weight is None:
            raise ConfigError(f"ssf: cannot merge into a {type(base).__name__} without affine parameters")
        shape = (-1,) + (1,) * (base.weight.dim() - 1)
        base.weight.mul_(self.gamma.view(shape))
        if base.bias is None:
            base.bias = nn.Parameter(self.beta.detach().clone(), requires_grad=False)
        else:
            base.bias.mul_(self.gamma).add_(self.beta)
        return base


class NormActScaleShift(ScaleShift):
    """SSF inside timm's ``BatchNormAct2d`` (batch norm, dropout and activation in one module): the scale and
    shift act on the normalised output before the dropout and the activation, where they fold into the batch
    norm's affine. Size 0 calls the module itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.base
        if self.size == 0:
            return norm(x)
        if _frozen_batch_norm(norm):
            return norm.act(norm.drop(self.scaled_batch_norm(x)))
        return norm.act(norm.drop(self.scale_shift(_BatchNorm.forward(norm, x))))


def _frozen_batch_norm(module: nn.Module) -> bool:
    """A BatchNorm that normalises with its running statistics (eval mode, as ``train.bn`` keeps it in PEFT runs)."""
    return isinstance(module, _BatchNorm) and not module.training and module.running_mean is not None


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
    if isinstance(base, _BatchNorm):
        return base.num_features
    raise ConfigError(
        f"ssf: site '{site}' is {type(base).__name__}; allowed: a Linear, a Conv2d, a LayerNorm or a BatchNorm"
    )


def channel_dim(module: nn.Module) -> int:
    """The channel axis of a module's output: 1 for NCHW maps (convolutions, batch norms, ``LayerNorm2d``), else -1."""
    base = inject.unwrapped(module)
    return 1 if isinstance(base, nn.Conv2d | _BatchNorm | LayerNorm2d) else -1


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


def _layers(parent: nn.Module, attr: str, kinds: tuple[type, ...], skip: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(parent, attribute)`` of every module of ``kinds`` at or below ``parent.attr`` (a wrapped one where its
    outermost wrapper sits), looking inside other modules but not inside weight layers, norms and ``skip``."""
    inner = inject.unwrapped(getattr(parent, attr))
    if inner is skip:
        return []
    if isinstance(inner, kinds):
        return [(parent, attr)]
    if isinstance(inner, WEIGHT_LAYERS + NORMS):
        return []
    return [found for name, _ in inner.named_children() for found in _layers(inner, name, kinds, skip)]


def _wrap_cnn(found: list[tuple[nn.Module, str]], block: int | None, site: str) -> None:
    """SSF after each found layer: inside a norm+activation layer before its activation, else after it."""
    for parent, attr in found:
        module = getattr(parent, attr)
        wrapper = NormActScaleShift if isinstance(inject.unwrapped(module), BatchNormAct2d) else ScaleShift
        inject.wrap(parent, attr, wrapper, output_width(module, site), block, channel_dim(module))


def _stem_and_head(model: nn.Module) -> tuple[list[str], list[str]]:
    """The model's direct children before the first one that holds blocks (the stem) and after the last (the
    head and the layers before it)."""
    blocks = {id(block) for block in inject.all_blocks(model)}
    children = list(model.named_children())
    holding = [i for i, (_, child) in enumerate(children) if any(id(m) in blocks for m in child.modules())]
    return [name for name, _ in children[: holding[0]]], [name for name, _ in children[holding[-1] + 1 :]]


def _attach_cnn(model: nn.Module, sites: list[str], enabled: list[int]) -> None:
    """After every convolution and Linear (``convs``) and every norm (``norms``) of each enabled block; after
    those of the stem and of the layers before the classifier (``stem``, ``head``: EfficientNet's conv_head and
    bn2, MobileNetV3's conv_head, ConvNeXt's head norm) while any block is on; after those of a stage's
    downsampling (``downsample``: ConvNeXt's norm and strided conv) with the first block of the stage it opens."""
    classifier = model.get_classifier()
    kinds = tuple(kind for site in ("convs", "norms") if site in sites for kind in CNN_SITE_KINDS[site])
    for index, (parent, attr) in enumerate(inject.block_slots(model)):
        if enabled[index] and kinds:
            block = inject.unwrapped(getattr(parent, attr))
            found = [f for name, _ in block.named_children() for f in _layers(block, name, kinds, classifier)]
            _wrap_cnn(found, index, "convs")
    first = 0
    for stage in getattr(model, "stages", ()):  # ConvNeXt: a stage opens with its downsampling
        if "downsample" in sites and enabled[first]:
            _wrap_cnn(_layers(stage, "downsample", WEIGHT_LAYERS + NORMS, classifier), first, "downsample")
        first += len(stage.blocks)
    if any(enabled):
        for site, names in zip(("stem", "head"), _stem_and_head(model), strict=True):
            if site in sites:
                found = [f for name in names for f in _layers(model, name, WEIGHT_LAYERS + NORMS, classifier)]
                _wrap_cnn(found, None, site)
    pair_with_norms(model)


@torch.no_grad()
def pair_with_norms(model: nn.Module) -> None:
    """Link every convolution's SSF whose output goes straight into a BatchNorm's SSF (``feeds`` / ``fed_by``), so
    that a frozen norm applies both in one pass. Which output feeds which norm is read from one forward pass of a
    small input in eval mode (module modes restored), not guessed from module names; timm's CNNs hand such an
    output to its norm alone."""
    wrappers = [m for m in model.modules() if isinstance(m, ScaleShift)]
    convs = [w for w in wrappers if isinstance(inject.unwrapped(w.base), nn.Conv2d)]
    norms = [w for w in wrappers if isinstance(w.base, _BatchNorm)]
    if not convs or not norms:
        return
    outputs: list[tuple[torch.Tensor, ScaleShift]] = []
    pairs: list[tuple[ScaleShift, ScaleShift]] = []

    def record(wrapper: ScaleShift, _inputs: tuple, output: torch.Tensor) -> None:
        outputs.append((output, wrapper))

    def match(wrapper: ScaleShift, inputs: tuple) -> None:
        pairs.extend((conv, wrapper) for output, conv in outputs if output is inputs[0])

    hooks = [w.register_forward_hook(record) for w in convs] + [w.register_forward_pre_hook(match) for w in norms]
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters())
    channels = getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0]
    try:
        model.eval()(torch.zeros(1, channels, 64, 64, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    for conv, norm in pairs:
        object.__setattr__(conv, "feeds", norm)
        object.__setattr__(norm, "fed_by", conv)


def attach(model: nn.Module, opts: SSFOptions, info: BackboneInfo) -> None:
    flags = [int(f) for f in opts.enabled] if isinstance(opts.enabled, list) else int(opts.enabled)
    enabled = per_block(flags, info.depth, "ssf.enabled", maximum=1)
    allowed = ALL_SITES if info.family == TRANSFORMER else CNN_SITES
    check_family_choices("ssf.sites", "a site", opts.sites, allowed, info.family)
    if info.family != TRANSFORMER:
        _attach_cnn(model, opts.sites, enabled)
        return
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
        cnn=True,
        family_defaults={
            TRANSFORMER: {"sites": list(ALL_SITES)},
            **{family: {"sites": list(CNN_SITES)} for family in CNN_FAMILIES.values()},
        },
    )
)
