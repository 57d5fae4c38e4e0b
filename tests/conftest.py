"""Tiny timm ViTs built offline, shared by the tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import autopeft
from autopeft.api import _head_parameters

WIDTH, DEPTH, HEADS, HIDDEN = 32, 3, 2, 128
VARIANTS = {
    "cls": {},
    "avg": {"class_token": False, "global_pool": "avg"},
    "reg": {"reg_tokens": 2, "no_embed_class": True},
}


def tiny_vit(variant: str = "cls", seed: int = 0, **kwargs) -> torch.nn.Module:
    """A width-32, depth-3 ViT on 32 px images with 8 px patches (16 patch tokens)."""
    torch.manual_seed(seed)
    options = dict(img_size=32, patch_size=8, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, **VARIANTS[variant])
    options.update(kwargs)
    return autopeft.create_backbone("vit_tiny_patch16_224", 5, **options).eval()


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomise_trainable(model: torch.nn.Module, seed: int = 2) -> None:
    """Give every trainable tensor but the head(s) random values (SSF scales stay near 1)."""
    generator = torch.Generator().manual_seed(seed)
    heads = {id(p) for p in _head_parameters(model)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and id(param) not in heads:
                noise = torch.randn(param.shape, generator=generator) * 0.2
                param.copy_(noise + (1.0 if name.endswith("gamma") else 0.0))


def checkpointing_keeps_outputs_and_gradients(model: torch.nn.Module, images: torch.Tensor) -> dict:
    """Assert that timm's gradient checkpointing (the blocks run one by one through torch's checkpoint) gives
    ``model`` in train mode the same output and gradients as without it; returns the gradients by name."""
    expected = model.train()(images)
    expected.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out = model(images)
    out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-6)
    return grads


@pytest.fixture
def run_cli(capsys):
    """``autopeft`` in this process (torch already loaded: fast, for one-line error checks): the exit code
    and what it printed on stderr."""
    from autopeft.cli import main

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().err

    return run
