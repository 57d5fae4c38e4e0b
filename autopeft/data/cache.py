"""Decode-once image cache: uint8 tensors at the backbone's input size, in memory or on disk."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from autopeft.data.formats import Item
from autopeft.errors import DataError

CACHE_VERSION = "2"  # 2: 16- and 32-bit integer images are scaled to 0..255, no longer clipped
CACHE_FOLDER = ".autopeft-cache"
log = logging.getLogger(__name__)


def decode_image(item: Item, size: int) -> np.ndarray:
    """Read one image as RGB, resized to ``size`` x ``size`` (bilinear), as uint8 HWC.

    16- and 32-bit integer images are scaled from their sample type's range to 0..255 first.
    """
    if not item.path.is_file():
        raise DataError(f"{item.origin}: image {item.path} does not exist")
    try:
        with Image.open(item.path) as image:
            return np.array(_to_8bit(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{item.origin}: cannot decode image {item.path} ({err})") from err


def _to_8bit(image: Image.Image) -> Image.Image:
    """An integer image of mode ``I`` or ``I;16*`` as 8-bit grayscale, scaled by its bit depth (``convert`` clips)."""
    if not image.mode.startswith("I"):
        return image
    bits, signed = _sample_type(image)
    values = np.asarray(image)
    if bits == 32 and not signed:
        values = values.view(np.uint32)  # Pillow holds unsigned 32-bit samples in int32
    white = 2 ** (bits - signed) - 1
    return Image.fromarray(np.clip(values * (255 / white), 0, 255).round().astype(np.uint8))


def _sample_type(image: Image.Image) -> tuple[int, bool]:
    """Bits per sample and signedness of an ``I``/``I;16*`` image: TIFF tags say; 16-bit PNG/PPM open as ``I``."""
    if image.mode != "I":
        return 16, False
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        bits, sample_format = tags.get(258, 32), tags.get(339, 1)
        bits = bits[0] if isinstance(bits, tuple) else bits
        sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
        return int(bits), sample_format == 2
    return (16, False) if image.format in ("PNG", "PPM") else (32, True)


def decode_images(items: list[Item], size: int) -> torch.Tensor:
    """Decode ``items`` in parallel threads into one ``(N, 3, size, size)`` uint8 tensor."""
    pool = torch.empty((len(items), 3, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor:
        for index, array in enumerate(executor.map(lambda item: decode_image(item, size), items)):
            pool[index] = torch.from_numpy(array).permute(2, 0, 1)
    return pool


def resize_arrays(images: np.ndarray, size: int) -> torch.Tensor:
    """In-memory uint8 images (N, H, W) or (N, H, W, 3) to ``(N, 3, size, size)`` uint8."""
    array = np.ascontiguousarray(images)
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(-1)
    if tensor.dim() != 4 or tensor.shape[-1] not in (1, 3) or tensor.dtype != torch.uint8:
        raise DataError(f"images: expected uint8 (N, H, W) or (N, H, W, 3), got {tensor.dtype} {tuple(tensor.shape)}")
    tensor = tensor.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    if tensor.shape[-2:] == (size, size):
        return tensor.contiguous()
    resized = F.interpolate(tensor.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def cache_key(items: list[Item], size: int) -> str:
    """Changes whenever the image list, a label, a file's size or modification time, or ``size`` changes."""
    digest = hashlib.sha256(f"autopeft-cache-v{CACHE_VERSION}|{size}".encode())
    for item in items:
        stat = item.path.stat() if item.path.is_file() else None
        digest.update(f"|{item.path}|{item.label}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cached_pool(items: list[Item], size: int, folder: Path | None, name: str) -> torch.Tensor:
    """Decoded images of ``items``, read from (or written to) ``folder/.autopeft-cache`` when given.

    A cache file that is corrupt, truncated or made for other data is ignored and rebuilt.
    """
    if folder is None:
        return decode_images(items, size)
    key = cache_key(items, size)
    directory = folder / CACHE_FOLDER
    file = directory / f"{name}-{size}px-{key[:16]}.safetensors"
    pool = _read_cache(file, key, len(items), size)
    if pool is not None:
        return pool
    pool = decode_images(items, size)
    _write_cache(directory, file, pool, key, f"{name}-{size}px-")
    return pool


def _read_cache(file: Path, key: str, count: int, size: int) -> torch.Tensor | None:
    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as handle:
            stored_key = (handle.metadata() or {}).get("key")
        pool = load_file(str(file))["images"]
    except (SafetensorError, OSError, KeyError, RuntimeError) as err:
        log.warning("cache %s is unreadable (%s); rebuilding it", file, err)
        return None
    if stored_key != key or pool.dtype != torch.uint8 or tuple(pool.shape) != (count, 3, size, size):
        log.warning("cache %s does not match its data; rebuilding it", file)
        return None
    return pool


def _write_cache(directory: Path, file: Path, pool: torch.Tensor, key: str, stale_prefix: str) -> None:
    try:
        directory.mkdir(exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        save_file({"images": pool}, str(tmp), metadata={"key": key, "version": CACHE_VERSION})
        os.replace(tmp, file)
        for stale in directory.glob(f"{stale_prefix}*.safetensors"):
            if stale != file:
                stale.unlink(missing_ok=True)
    except OSError as err:
        log.warning("cannot write cache %s (%s); keeping the decoded images in memory only", file, err)
