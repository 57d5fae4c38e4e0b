"""Prompt tensors that pruning shrinks to their kept tokens and masks by segment (VPT's and key-value prompts)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autopeft.errors import ConfigError
from autopeft.methods.base import ElasticWrapper, Index, elastic_modules


class KeptSegments(nn.Module):
    """A prompt tensor whose tokens are cut into ``keep.shape[1]`` equal segments, of which only the kept
    ones are a parameter (``values``: one row per kept segment, token by token); pruned segments are fixed
    zeros. ``keep`` is ``(tokens, segments)``, True where kept; ``token_dim`` is the tensor's token axis."""

    def __init__(self, tensor: torch.Tensor, token_dim: int, keep: torch.Tensor, requires_grad: bool) -> None:
        super().__init__()
        self.shape, self.token_dim = tuple(tensor.shape), token_dim
        self.register_buffer("keep", keep.to(device=tensor.device, dtype=torch.bool), persistent=False)
        rows = as_rows(tensor.detach(), token_dim).reshape(keep.numel(), -1)
        self.values = nn.Parameter(rows[self.keep.flatten()].clone(), requires_grad=requires_grad)

    def rows(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor as ``(tokens, width)`` with pruned segments zero; ``values`` (shaped like the
        parameter, e.g. its gradient) in place of the parameter."""
        values = self.values if values is None else values
        flat = values.new_zeros(self.keep.numel(), values.shape[1]).index_put((self.keep.flatten(),), values)
        return flat.view(self.keep.shape[0], -1)

    def forward(self) -> torch.Tensor:
        """The tensor in its own layout (``shape``), pruned segments zero."""
        rest = self.shape[: self.token_dim] + self.shape[self.token_dim + 1 :]
        return self.rows().view(self.shape[self.token_dim], *rest).movedim(0, self.token_dim)


def as_rows(tensor: torch.Tensor, token_dim: int) -> torch.Tensor:
    """``tensor`` as ``(tokens, width)``: one row per token (its slice along ``token_dim``, flattened)."""
    return tensor.movedim(token_dim, 0).reshape(tensor.shape[token_dim], -1)


class PromptWrapper(ElasticWrapper):
    """An elastic wrapper whose own tensors are prompt tokens (``tensors``: the attribute names, None when
    absent; ``token_dim``: their token axis). Pruning shrinks them to the kept tokens (``keep_tokens``) and
    fixes segments of a tensor at zero (``keep_segments``: the tensor is then a ``KeptSegments``)."""

    tensors: tuple[str, ...] = ()
    token_dim: int = 0

    def present(self) -> list[str]:
        """The names of the prompt tensors this module holds."""
        return [name for name in self.tensors if getattr(self, name) is not None]

    def prompt_tensor(self, name: str) -> torch.Tensor | None:
        """Prompt tensor ``name`` in its own layout, pruned segments zero (None when absent)."""
        held = getattr(self, name)
        return held() if isinstance(held, KeptSegments) else held

    def prompt_parameter(self, name: str) -> nn.Parameter:
        """The parameter that holds prompt tensor ``name`` (its kept segments' values once masked)."""
        held = getattr(self, name)
        return held.values if isinstance(held, KeptSegments) else held

    def token_rows(self, name: str, values: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt tensor ``name`` as ``(max_size, width)``, one row per token, pruned segments zero; with
        ``values`` (shaped like ``prompt_parameter(name)``, e.g. its gradient) that tensor arranged the same way."""
        held = getattr(self, name)
        if isinstance(held, KeptSegments):
            return held.rows(values)
        return as_rows(held if values is None else values, self.token_dim)

    def segment_keep(self, name: str) -> torch.Tensor | None:
        """The fixed ``(tokens, segments)`` mask of tensor ``name`` (True: kept), or None when unmasked."""
        held = getattr(self, name)
        return held.keep if isinstance(held, KeptSegments) else None

    def keep_tokens(self, kept: list[int]) -> None:
        """Shrink every prompt tensor to the tokens ``kept`` (ascending indices below the active size): the
        others leave the parameters, so they cost no compute; none kept removes the tensors."""
        for name in self.present():
            held = getattr(self, name)
            if not kept:
                self._hold(name, None)
                continue
            index = torch.tensor(kept, dtype=torch.long, device=self.prompt_parameter(name).device)
            tensor = self.prompt_tensor(name).detach().index_select(self.token_dim, index)
            grad = self.prompt_parameter(name).requires_grad
            if isinstance(held, KeptSegments):
                self._hold(name, KeptSegments(tensor, self.token_dim, held.keep[index], grad))
            else:
                self._hold(name, nn.Parameter(tensor.clone(), requires_grad=grad))
        self.max_size = len(kept)
        self.size = len(kept)

    def keep_segments(self, name: str, keep: torch.Tensor) -> None:
        """Fix the segments of tensor ``name`` where ``keep`` (``(max_size, segments)``) is False at zero;
        only the kept segments stay a parameter."""
        tensor = self.prompt_tensor(name).detach()
        self._hold(name, KeptSegments(tensor, self.token_dim, keep, self.prompt_parameter(name).requires_grad))

    def _hold(self, name: str, value: nn.Module | nn.Parameter | None) -> None:
        delattr(self, name)
        setattr(self, name, value)

    def own_parameters(self) -> list[nn.Parameter]:
        return [self.prompt_parameter(name) for name in self.present()]

    def active_parts(self) -> list[tuple[nn.Parameter, Index]]:
        parts = []
        for name in self.present():
            keep = self.segment_keep(name)
            if keep is None:
                index = (slice(None),) * self.token_dim + (slice(0, self.size),)
            else:
                index = (slice(0, int(keep[: self.size].sum())),)
            parts.append((self.prompt_parameter(name), index))
        return parts

    def count(self) -> int:
        total = 0
        for name in self.present():
            keep, param = self.segment_keep(name), self.prompt_parameter(name)
            if keep is None:
                total += param.numel() // self.max_size * self.size
            else:
                total += int(keep[: self.size].sum()) * param.shape[1]
        return total


def prompt_wrappers(model: nn.Module) -> list[PromptWrapper]:
    """The prompt modules of ``model`` (VPT's and key-value prompts), in tree order."""
    return [m for m in elastic_modules(model) if isinstance(m, PromptWrapper)]


@dataclass
class SegmentMask:
    """The fixed segment mask of one prompt tensor: per token, one character per segment, 1 kept and 0 pruned."""

    method: str
    block: int
    tensor: str
    keep: list[str]


def segment_masks(model: nn.Module) -> list[SegmentMask]:
    """The segment masks of ``model``'s prompt tensors (none before segment pruning)."""
    masks = []
    for module in prompt_wrappers(model):
        for name in module.present():
            keep = module.segment_keep(name)
            if keep is not None:
                masks.append(SegmentMask(module.method, module.block, name, mask_rows(keep)))
    return masks


def mask_rows(keep: torch.Tensor) -> list[str]:
    """A ``(tokens, segments)`` mask as one string per token, one character per segment: 1 kept, 0 pruned."""
    return ["".join("1" if kept else "0" for kept in row) for row in keep.tolist()]


def set_segment_masks(model: nn.Module, masks: list[SegmentMask], where: str) -> None:
    """Fix ``masks`` on ``model``'s prompt tensors; every mask is checked first (``where``: the file it came
    from), so a bad one changes nothing."""
    modules = {(m.method, m.block): m for m in prompt_wrappers(model)}
    planned = []
    for mask in masks:
        module = modules.get((mask.method, mask.block))
        if module is None or mask.tensor not in module.present():
            raise ConfigError(
                f"{where}: segment mask for {mask.method} block {mask.block} tensor '{mask.tensor}', which the "
                f"model does not have"
            )
        width = module.token_rows(mask.tensor).shape[1]
        segments = len(mask.keep[0]) if mask.keep else 0
        if (
            len(mask.keep) != module.max_size
            or not segments
            or width % segments
            or any(len(row) != segments or set(row) - {"0", "1"} for row in mask.keep)
        ):
            raise ConfigError(
                f"{where}: segment mask for {mask.method} block {mask.block} tensor '{mask.tensor}': allowed: "
                f"{module.max_size} strings of 0 and 1, all of one length dividing the width {width}"
            )
        planned.append((module, mask.tensor, torch.tensor([[c == "1" for c in row] for row in mask.keep])))
    for module, name, keep in planned:
        module.keep_segments(name, keep)
