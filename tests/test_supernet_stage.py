"""Supernet training (sampling rules, sandwich steps, masked AdamW, resumable) and inherited scoring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autopeft.build import build_model
from autopeft.errors import RunInterrupted
from autopeft.optim import MaskedAdamW
from autopeft.runconfig import parse_run_config
from autopeft.search.supernet_stage import SupernetSteps, fit_head, inherited_score, refit_score, train_supernet
from autopeft.supernet import Supernet, parse_space
from autopeft.train import Precision

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
CPU = Precision(torch.device("cpu"))  # fp32, no loss scaling
SPACE = {"methods": {"lora": {"sizes": [0, 2, 4]}, "adapter": {"sizes": [0, 4]}, "vpt": {"sizes": [0, 2]}}}


def setup(epochs: int = 2):
    config = parse_run_config(
        {
            "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "options": TINY},
            "data": {"name": "digits"},
            "methods": {"linear": {}},
            "train": {"epochs": epochs, "batch_size": 200, "lr": 0.01, "warmup_epochs": 0},
        },
        "test",
    )
    model, task, norm = build_model(config, with_methods=False)
    return Supernet(model, parse_space(SPACE, "space")), task, norm, config


def trainable(supernet: Supernet) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in supernet.model.named_parameters() if p.requires_grad}


def test_training_updates_every_method_and_val_is_the_largest_subnets(tmp_path):
    supernet, task, norm, config = setup()
    before = trainable(supernet)
    steps = SupernetSteps(supernet, "sandwich", None, seed=0)
    history, seconds = train_supernet(steps, task, norm, config, tmp_path)
    after = trainable(supernet)
    assert [name for name in before if torch.equal(before[name], after[name])] == []
    assert [h.epoch for h in history] == [1, 2]
    assert [h.train_images for h in history] == [4 * 800, 4 * 800]  # largest, smallest, 2 random per batch
    assert supernet.subnet == supernet.largest()
    scored = inherited_score(supernet, task, norm)(supernet.largest())
    assert (history[-1].val_acc, history[-1].val_loss) == scored
    assert 0 < seconds < 600


def test_resumed_training_ends_with_the_same_weights(tmp_path):
    def steps(supernet):
        return SupernetSteps(supernet, "sandwich", 600, seed=0)

    supernet, task, norm, config = setup(epochs=2)
    train_supernet(steps(supernet), task, norm, config, tmp_path / "whole")
    whole = trainable(supernet)
    first, task, norm, config = setup(epochs=2)
    with pytest.raises(RunInterrupted):
        train_supernet(steps(first), task, norm, config, tmp_path / "split", progress=CtrlCAfterFirstEpoch())
    resumed, task, norm, config = setup(epochs=2)
    train_supernet(steps(resumed), task, norm, config, tmp_path / "split", resume=True)
    assert all(torch.equal(whole[name], tensor) for name, tensor in trainable(resumed).items())


class CtrlCAfterFirstEpoch:
    """A progress display whose user presses Ctrl-C once the first epoch is saved."""

    def start(self, *args) -> None: ...

    def step(self, *args) -> None: ...

    def stop(self) -> None: ...

    def epoch(self, record: dict) -> None:
        raise KeyboardInterrupt


def test_each_rule_draws_the_same_subnets_for_a_step_and_stays_in_the_budget():
    supernet, *_ = setup()
    budget = 700
    sandwich = SupernetSteps(supernet, "sandwich", budget, seed=0)
    drawn = sandwich.subnets(5)
    assert drawn == sandwich.subnets(5) and drawn != sandwich.subnets(6)
    assert drawn[:2] == [supernet.largest_within(budget), supernet.smallest_nonempty()] and len(drawn) == 4
    for step in range(20):
        for subnet in [*sandwich.subnets(step), *SupernetSteps(supernet, "budget", budget, 0).subnets(step)]:
            assert supernet.count(subnet) <= budget
    uniform = [SupernetSteps(supernet, "uniform", budget, 0).subnets(step)[0] for step in range(20)]
    assert max(supernet.count(s) for s in uniform) > budget  # uniform ignores the budget


@pytest.mark.parametrize("distill", [False, True])
def test_sandwich_step_gradient_is_the_sum_of_its_subnets_gradients(distill):
    supernet, task, _norm, _ = setup()
    model = supernet.model.eval()  # no prompt dropout: the two computations see the same forward
    split = task.split("train")
    images, labels = split.batch(torch.arange(16))
    inputs = (images.float() / 255 - 0.5) / 0.5
    steps = SupernetSteps(supernet, "sandwich", 600, seed=0, distill=distill)
    model.zero_grad(set_to_none=True)
    _loss, passes = steps(model, inputs, labels, 3, CPU)
    together = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    expected: dict[str, torch.Tensor] = {}
    teacher = None
    for subnet in steps.subnets(3):
        model.zero_grad(set_to_none=True)
        supernet.set_subnet(subnet)
        logits = model(inputs)
        alone = (
            F.cross_entropy(logits, labels)
            if teacher is None or not distill
            else F.kl_div(F.log_softmax(logits, -1), F.softmax(teacher, -1), reduction="batchmean")
        )
        alone.backward()
        teacher = logits.detach() if teacher is None else teacher
        for name, param in model.named_parameters():
            if param.grad is not None:
                expected[name] = expected.get(name, 0) + param.grad
    assert passes == 4 and together.keys() == expected.keys()
    for name, grad in together.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7)


def test_masked_step_leaves_inactive_slices_bit_for_bit_unchanged():
    supernet, task, _norm, _config = setup()
    model = supernet.model
    steps = SupernetSteps(supernet, "budget", 600, seed=0)
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = MaskedAdamW(trainable_params, lambda: steps.masks, lr=0.05, weight_decay=0.1)
    split = task.split("train")
    images, labels = split.batch(torch.arange(32))
    inputs = (images.float() / 255 - 0.5) / 0.5
    for step in range(6):  # moments everywhere become non-zero
        optimizer.zero_grad(set_to_none=True)
        steps(model, inputs, labels, step, CPU)
        optimizer.step()
    before = {p: (p.detach().clone(), {k: v.clone() for k, v in optimizer.state[p].items()}) for p in trainable_params}
    optimizer.zero_grad(set_to_none=True)
    steps(model, inputs, labels, 6, CPU)
    optimizer.step()
    partial = moved = 0
    for param, mask in steps.masks.items():
        old, state = before[param]
        assert torch.equal(param.detach()[~mask], old[~mask])
        for key, value in optimizer.state[param].items():  # a tensor first stepped now starts at zero
            assert torch.equal(value[~mask], state[key][~mask] if state else torch.zeros_like(value[~mask]))
        partial += bool(mask.any() and not mask.all())
        moved += not torch.equal(param.detach()[mask], old[mask])
    assert partial > 0 and moved > 0  # the step used part of some tensors, and moved what it used


def test_masked_adamw_with_everything_active_follows_adamw():
    torch.manual_seed(0)
    first = torch.nn.Parameter(torch.randn(6, 5))
    second = torch.nn.Parameter(first.detach().clone())
    plain = torch.optim.AdamW([first], lr=1e-2, weight_decay=0.1)
    masked = MaskedAdamW([second], lambda: {}, lr=1e-2, weight_decay=0.1)
    for _ in range(25):
        grad = torch.randn(6, 5)
        first.grad, second.grad = grad.clone(), grad.clone()
        plain.step()
        masked.step()
    torch.testing.assert_close(first.detach(), second.detach(), rtol=0, atol=1e-6)


def test_a_refit_head_separates_what_a_random_head_cannot():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    features = torch.randn(120, 8, generator=generator) + 4 * F.one_hot(labels, 8).float()
    head = fit_head(features, labels, 3)
    assert (head(features).argmax(-1) == labels).float().mean() == 1.0
    supernet, task, norm, _ = setup()
    subnet = supernet.largest()
    refit, inherited = refit_score(supernet, task, norm)(subnet), inherited_score(supernet, task, norm)(subnet)
    assert refit == refit_score(supernet, task, norm)(subnet)  # deterministic: L-BFGS from zero
    assert refit[1] < inherited[1]  # the shared head is untrained here; a fitted one does better on val
