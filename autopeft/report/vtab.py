"""VTAB-1k: task names (NOAH's folder names), groups, and the published table quoted for comparison."""

from __future__ import annotations

GROUPS: dict[str, tuple[str, ...]] = {
    "Natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "Specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "Structured": (
        "clevr_count",
        "clevr_dist",
        "dmlab",
        "kitti",
        "dsprites_loc",
        "dsprites_ori",
        "smallnorb_azi",
        "smallnorb_ele",
    ),
}
TASKS: tuple[str, ...] = tuple(task for tasks in GROUPS.values() for task in tasks)
PREFIX = "vtab-1k/"

PUBLISHED_TITLE = "Published results (quoted, not run here)"
PUBLISHED_SOURCE = (
    "Quoted from the published papers (VPT, Adapter, LoRA, AdaptFormer, E2VPT, NOAH, SSF, HST) and the V-PETL "
    "Bench per-task tables: VTAB-1k, ViT-B/16 pretrained on ImageNet-21k, top-1 %; G (mean of the group means) and "
    "M19 (mean of the 19 tasks) recomputed from the per-task rows. These numbers were not produced by autopeft and "
    "most papers report the best test accuracy over epochs, which autopeft's protocol forbids."
)
PUBLISHED_COLUMNS = ("method", "params", "Natural", "Specialized", "Structured", "G", "M19")
PUBLISHED: tuple[tuple[str, ...], ...] = (
    ("Full fine-tune", "85.8 M", "75.9", "83.4", "47.6", "68.97", "65.57"),
    ("Linear probe", "0.04 M", "69.1", "77.1", "26.9", "57.68", "52.99"),
    ("VPT-deep", "~0.6 M", "78.5", "82.4", "55.0", "71.97", "69.43"),
    ("Adapter (8)", "0.16 M", "79.0", "84.1", "58.5", "73.86", "71.44"),
    ("LoRA (8)", "0.29 M", "79.5", "84.6", "59.8", "74.60", "72.25"),
    ("AdaptFormer", "0.16 M", "80.6", "84.9", "58.8", "74.75", "72.32"),
    ("E2VPT", "~0.3%", "80.0", "84.4", "57.4", "73.94", "71.42"),
    ("NOAH", "0.43 M", "80.3", "84.9", "61.3", "75.48", "73.25"),
    ("SSF (AugReg backbone)", "0.21 M", "81.6", "86.6", "59.0", "75.69", "73.10"),
    ("best found (HST)", "0.78 M", "82.8", "87.1", "64.5", "78.13", "75.99"),
)


def canonical(dataset: str) -> str:
    """A VTAB-1k task's folder name without the ``vtab-1k/`` prefix; other names unchanged."""
    stripped = dataset.removeprefix(PREFIX)
    return stripped if stripped in TASKS else dataset


def is_vtab(dataset: str) -> bool:
    return dataset in TASKS
