"""Tensor-side transforms: normalisation from the backbone's config and optional augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def input_config(model: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """``(image size, mean, std)``: the size the model was built for and its pretrained config's normalisation.

    The same normalisation is used in every stage (search, training, evaluation, export).
    """
    cfg = model.pretrained_cfg
    patch_embed = getattr(model, "patch_embed", None)
    size = patch_embed.img_size[-1] if getattr(patch_embed, "img_size", None) else cfg["input_size"][-1]
    return int(size), tuple(cfg["mean"]), tuple(cfg["std"])


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` to float, scaled to [0, 1] and standardised per channel."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255.0
    return images.to(torch.float32, copy=True).sub_(mean_t).div_(std_t)  # in place: half the memory traffic


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool = False, shift: int = 0) -> torch.Tensor:
    """Random horizontal flips and random shifts of up to ``shift`` pixels (zero padded), on uint8 tensors."""
    if flip:
        mask = torch.rand(images.shape[0], generator=generator) < 0.5
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
    if shift:
        height, width = images.shape[-2:]
        padded = F.pad(images, (shift, shift, shift, shift))
        dx, dy = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
        images = padded[..., dy : dy + height, dx : dx + width]
    return images
