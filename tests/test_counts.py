"""count_trainable equals the README's parameter formulas, for several sizes and per-block lists."""

from __future__ import annotations

import pytest

import autopeft
from tests.conftest import DEPTH, HIDDEN, WIDTH, tiny_vit

d, L, h = WIDTH, DEPTH, HIDDEN


def per_block(value):
    return value if isinstance(value, list) else [value] * L


def lora_formula(rank=8, targets=("q", "v")):
    per_rank = {"q": 2 * d, "k": 2 * d, "v": 2 * d, "proj": 2 * d, "qkv": 4 * d, "fc1": d + h, "fc2": d + h}
    return sum(r * per_rank[t] for r in per_block(rank) for t in targets)


def adapter_formula(dim=8, sites=("mlp",), scale=0.1):
    extra = {"learnable": d, "learnable_scalar": 1}.get(scale, 0)
    return sum((2 * d * k + k + d + extra) * len(sites) for k in per_block(dim) if k)


def ssf_formula(enabled=1, sites=("patch_embed", "norm1", "qkv", "proj", "norm2", "fc1", "fc2", "norm")):
    widths = {"norm1": d, "qkv": 3 * d, "proj": d, "norm2": d, "fc1": h, "fc2": d}
    on = per_block(enabled)
    block = sum(2 * w for site, w in widths.items() if site in sites)
    outer = sum(2 * d for site in ("patch_embed", "norm") if site in sites) if any(on) else 0
    return sum(on) * block + outer


CASES = [
    ({"lora": {}}, lora_formula()),
    ({"lora": {"rank": 4, "targets": ["qkv"]}}, lora_formula(4, ["qkv"])),
    (
        {"lora": {"rank": [1, 0, 16], "targets": ["k", "proj", "fc1", "fc2"]}},
        lora_formula([1, 0, 16], ["k", "proj", "fc1", "fc2"]),
    ),
    ({"adapter": {}}, adapter_formula()),
    ({"adapter": {"dim": [0, 3, 64], "sites": ["mlp", "attn"]}}, adapter_formula([0, 3, 64], ["mlp", "attn"])),
    ({"adapter": {"dim": 5, "scale": "learnable"}}, adapter_formula(5, scale="learnable")),
    (
        {"adapter": {"dim": 5, "scale": "learnable_scalar", "position": "sequential"}},
        adapter_formula(5, scale="learnable_scalar"),
    ),
    ({"vpt": {}}, 10 * d * L),
    ({"vpt": {"length": [1, 0, 7]}}, 8 * d),
    ({"vpt": {"length": 50, "mode": "shallow"}}, 50 * d),
    ({"kv_prompt": {}}, 5 * d * L),
    ({"kv_prompt": {"length": [2, 0, 9], "shared": False}}, 2 * 11 * d),
    ({"ssf": {}}, ssf_formula()),
    ({"ssf": {"enabled": [1, 0, 1]}}, ssf_formula([1, 0, 1])),
    ({"ssf": {"sites": ["qkv", "fc1"], "enabled": [0, 1, 0]}}, ssf_formula([0, 1, 0], ["qkv", "fc1"])),
    # bitfit: patch-embed d, per block norm1 d + qkv 3d + proj d + norm2 d + fc1 h + fc2 d, final norm d
    ({"bitfit": {}}, d + L * (7 * d + h) + d),
    # ln_tune: weight and bias of norm1, norm2 per block and of the final norm
    ({"ln_tune": {}}, L * 4 * d + 2 * d),
    ({"linear": {}}, 0),
    (
        {"lora": {"rank": 2}, "adapter": {"dim": 3}, "vpt": {"length": 4}, "ssf": {}, "kv_prompt": {"length": 6}},
        lora_formula(2) + adapter_formula(3) + 4 * d * L + ssf_formula() + 6 * d * L,
    ),
]


@pytest.mark.parametrize(("methods", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_count_equals_formula(methods, expected):
    model = autopeft.apply(tiny_vit(), methods)
    assert autopeft.count_trainable(model) == expected
    head = {id(p) for p in model.head.parameters()}
    allocated = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head)
    assert allocated == expected, "at full size every allocated trainable tensor is counted"


def test_full_counts_every_backbone_parameter():
    model = autopeft.apply(tiny_vit(), {"full": {}})
    total = sum(p.numel() for p in model.parameters())
    assert autopeft.count_trainable(model) == total - sum(p.numel() for p in model.head.parameters())


def test_count_follows_active_sizes():
    model = autopeft.apply(tiny_vit(), {"lora": {"rank": 8}, "adapter": {"dim": 8}, "kv_prompt": {"length": 10}})
    autopeft.set_sizes(model, "lora", [8, 2, 0])
    autopeft.set_sizes(model, "adapter", [0, 1, 8])
    autopeft.set_sizes(model, "kv_prompt", [10, 0, 1])
    assert autopeft.count_trainable(model) == lora_formula([8, 2, 0]) + adapter_formula([0, 1, 8]) + 11 * d
    assert autopeft.get_sizes(model, "adapter") == [0, 1, 8]
