"""The supernet: one set of elastic modules, subnets as leading slices, exact counts, one define-by-run space."""

from __future__ import annotations

import random
import re

import optuna
import pytest
import torch
import yaml

import autopeft
from autopeft.errors import BudgetError, ConfigError
from autopeft.supernet import SubnetConfig, Supernet, method_config, parse_space, suggest
from tests.conftest import DEPTH, randomise_trainable, tiny_vit
from tests.test_train import cli

SPACE = {
    "methods": {
        "lora": {"sizes": [0, 2, 4]},
        "adapter": {"sizes": [0, 3, 6]},
        "vpt": {"sizes": [0, 1, 3]},
        "kv_prompt": {"sizes": [0, 2]},
        "ssf": {"sizes": [0, 1]},
    }
}


def supernet(space: dict = SPACE, variant: str = "cls") -> Supernet:
    net = Supernet(tiny_vit(variant), parse_space(space, "space"))
    randomise_trainable(net.model)
    return net


def standalone_with_inherited_weights(net: Supernet, subnet: SubnetConfig, variant: str = "cls") -> torch.nn.Module:
    """The subnet built on its own (``method_config``), its tensors the leading slices of the supernet's."""
    model = autopeft.apply(tiny_vit(variant), method_config(net.space, subnet))
    shared = {unwrapped(name): tensor for name, tensor in net.model.state_dict().items()}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(shared[unwrapped(name)][tuple(slice(0, n) for n in tensor.shape)])
    return model


def unwrapped(name: str) -> str:
    """A tensor's name without wrapper levels: a block may be wrapped in the supernet and not standalone
    (a parallel adapter also takes the block's ``norm2`` in as ``mlp.norm``)."""
    return re.sub(r"(\.base)+\.", ".", name).replace(".mlp.norm.", ".norm2.")


def test_every_subnet_equals_the_standalone_model_with_inherited_weights(variant, images):
    net = supernet(variant=variant)
    rng = random.Random(0)
    for subnet in [net.largest(), *(net.sample(rng) for _ in range(4))]:
        net.set_subnet(subnet)
        model = standalone_with_inherited_weights(net, subnet, variant)
        torch.testing.assert_close(net.model(images), model(images), rtol=0, atol=1e-5)


def test_count_is_exact_and_needs_no_forward_pass():
    net = supernet()
    rng = random.Random(1)
    for subnet in [net.largest(), net.smallest(), *(net.sample(rng) for _ in range(6))]:
        standalone = autopeft.apply(tiny_vit(), method_config(net.space, subnet))
        assert net.count(subnet) == autopeft.count_trainable(standalone)
    assert net.subnet == net.largest()  # counting leaves the active subnet as it was


def test_smallest_subnet_is_the_plain_backbone(images):
    net = supernet()
    net.set_subnet(net.smallest())
    plain = tiny_vit()
    plain.head.load_state_dict(net.model.head.state_dict())
    assert torch.equal(net.model(images), plain(images))
    assert net.count(net.smallest()) == 0
    assert method_config(net.space, net.smallest()) == {"linear": {}}


def test_largest_count_matches_the_design_formulas():
    # width 32, MLP 128, 3 blocks: LoRA q,v 2*r*d*2; adapter 2*d*k+k+d; VPT p*d; KV t*d; SSF 2*(8d+h) per block + 4d
    d, h, blocks = 32, 128, DEPTH
    per_block = 2 * 2 * 4 * d + (2 * d * 6 + 6 + d) + 3 * d + 2 * d + 2 * (7 * d + h)
    assert supernet().count(supernet().largest()) == blocks * per_block + 2 * 2 * d


def test_sampling_is_seeded_and_stays_inside_the_space():
    net = supernet()
    first = [net.sample(random.Random(7)) for _ in range(3)]
    assert first == [net.sample(random.Random(7)) for _ in range(3)]
    samples = {net.sample(random.Random(seed)) for seed in range(40)}
    assert len(samples) > 30  # distinct candidates, hashable
    for subnet in samples:
        for method, spec in net.space.methods.items():
            assert len(subnet.size(method)) == DEPTH and set(subnet.size(method)) <= set(spec.sizes)
    assert net.largest().size("lora") == (4, 4, 4) and net.smallest().size("adapter") == (0, 0, 0)


def test_sampling_within_a_range_stays_in_it():
    net = supernet()
    low, high = 5_000, 9_000
    rng = random.Random(0)
    counts = [net.count(net.sample_within(rng, high, low)) for _ in range(8)]
    assert all(low <= c <= high for c in counts) and len(set(counts)) > 4
    with pytest.raises(BudgetError, match=r"no subnet of the space has 1\.\.1 trainable parameters"):
        net.sample_within(rng, 1, 1, tries=200)


def test_largest_within_a_budget_is_maximal():
    net = supernet()
    for budget in (3_000, 10_000, 25_000):
        top = net.largest_within(budget)
        assert net.count(top) <= budget
        for method, spec in net.space.methods.items():
            for block in range(DEPTH):
                sizes = list(top.size(method))
                larger = sorted(v for v in spec.sizes if v > sizes[block])
                if larger:
                    sizes[block] = larger[0]
                    grown = SubnetConfig.of({**{m: top.size(m) for m in net.space.methods}, method: sizes})
                    assert net.count(grown) > budget  # no single step up still fits
    assert net.largest_within(net.count(net.largest())) == net.largest()


def test_smallest_nonempty_and_the_budget_check():
    net = supernet()
    bottom = net.smallest_nonempty()
    assert net.count(bottom) == 32  # one 1-token VPT prompt in one block (width 32): the cheapest gene
    net.check_budget(net.count(bottom))
    with pytest.raises(BudgetError, match=r"search.budget: got 31 trainable parameters; allowed: >= 32"):
        net.check_budget(31, "search.budget")


def test_depth_gene_switches_off_the_later_blocks():
    net = supernet({**SPACE, "depths": [1, 2]})
    for seed in range(10):
        subnet = net.sample(random.Random(seed))
        deepest = max((b for m in SPACE["methods"] for b, s in enumerate(subnet.size(m)) if s), default=-1)
        assert deepest < 2
    assert net.largest().size("lora") == (4, 4, 0)


def test_one_size_per_model_space():
    net = supernet({**SPACE, "sizes_per": "model"})
    for seed in range(5):
        subnet = net.sample(random.Random(seed))
        assert all(len(set(subnet.size(m))) == 1 for m in SPACE["methods"])


def test_runtime_options_change_the_output_not_the_count(images):
    space = {
        "methods": {
            "lora": {"sizes": [2, 4], "search": {"alpha": [1.0, 8.0]}},
            "adapter": {"sizes": [4], "search": {"scale": [0.1, 1.0]}},
        }
    }
    net = supernet(space)
    low = SubnetConfig.of(
        {"lora": [4] * DEPTH, "adapter": [4] * DEPTH}, {"lora": {"alpha": 1.0}, "adapter": {"scale": 0.1}}
    )
    high = SubnetConfig.of(
        {"lora": [4] * DEPTH, "adapter": [4] * DEPTH}, {"lora": {"alpha": 8.0}, "adapter": {"scale": 1.0}}
    )
    net.set_subnet(low)
    out_low = net.model(images)
    net.set_subnet(high)
    assert not torch.allclose(out_low, net.model(images))
    assert net.count(low) == net.count(high)
    model = standalone_with_inherited_weights(net, high)
    torch.testing.assert_close(net.model(images), model(images), rtol=0, atol=1e-5)
    assert method_config(net.space, high)["lora"] == {"alpha": 8.0, "rank": 4}


def test_define_by_run_function_drives_a_real_optuna_study():
    net = supernet()
    study = optuna.create_study(directions=["minimize"], sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    study.optimize(lambda trial: net.count(suggest(trial, net.space, DEPTH)), n_trials=8)
    assert len(study.trials) == 8
    best = suggest(optuna.trial.FixedTrial(study.best_params), net.space, DEPTH)
    assert net.count(best) == study.best_value


def test_subnet_config_round_trips_through_plain_data():
    net = supernet()
    subnet = net.sample(random.Random(3))
    assert SubnetConfig.from_dict(subnet.to_dict()) == subnet
    assert hash(SubnetConfig.from_dict(subnet.to_dict())) == hash(subnet)


@pytest.mark.parametrize(
    ("space", "problem"),
    [
        ({"methods": {"bitfit": {"sizes": [0]}}}, "not searchable; allowed: lora"),
        ({"methods": {"lora": {"sizes": [0, 2], "options": {"rank": 4}}}}, "'rank' is the size"),
        ({"methods": {"ssf": {"sizes": [0, 2]}}}, "allowed for ssf: 0 (off) and 1 (on)"),
        ({"methods": {"lora": {"sizes": [2, 2]}}}, "distinct non-negative integers"),
        ({"methods": {"lora": {"sizes": [2]}}, "train": {"momentum": {"low": 0.1, "high": 1}}}, "train.momentum"),
        ({"methods": {"lora": {"sizes": [2]}}, "train": {"lr": {"low": 1, "high": 0.1}}}, "0 < low <= high"),
        ({"methods": {"lora": {"sizes": [2]}}, "bogus": 1}, "unknown option 'bogus'"),
        ({"methods": {}}, "needs a 'methods' mapping"),
    ],
)
def test_bad_spaces_fail_with_one_clear_line(space, problem):
    with pytest.raises(ConfigError, match="space") as err:
        parse_space(space, "space.yaml")
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_a_target_the_backbone_lacks_is_refused_before_the_run_directory(tmp_path):
    """Targets depend on the backbone family, so a space is checked against it when the supernet is built."""
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"space": {"methods": {"lora": {"sizes": [0, 2], "options": {"targets": ["x"]}}}}})
    )
    done = cli("run", str(config), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert done.stderr.strip() == (
        "autopeft: error: lora.targets: 'x' is not a target of a transformer; "
        "allowed there: q, k, v, qkv, proj, fc1, fc2"
    )


@pytest.mark.parametrize(
    ("space", "problem"),
    [
        ({"methods": {"adapter": {"sizes": [4], "search": {"position": ["parallel", "sequential"]}}}}, "position"),
        ({"methods": {"lora": {"sizes": [2]}}, "train": {"lr": {"low": 1e-4, "high": 1e-2}}}, "inherited supernet"),
    ],
)
def test_supernet_refuses_what_shared_weights_cannot_score(space, problem):
    with pytest.raises(ConfigError, match=problem):
        Supernet(tiny_vit(), parse_space(space, "space.yaml"))


@pytest.mark.parametrize("value", ["learnable", "learnable_scalar"])
def test_searched_adapter_scale_must_be_a_number(value):
    space = parse_space({"methods": {"adapter": {"sizes": [4], "search": {"scale": [0.1, value]}}}}, "space.yaml")
    with pytest.raises(ConfigError) as err:  # standalone trials may search it; shared weights cannot
        Supernet(tiny_vit(), space)
    assert str(err.value) == (
        f"supernet: adapter.search.scale: got {value!r}; allowed: numbers (the supernet sets a searched scale at "
        f"run time; a learnable one changes the module structure: fix it under options, or search it with "
        f"standalone trials in `autopeft search`)"
    )


def test_searched_adapter_scales_run_and_a_learnable_one_is_fixed_under_options(images):
    net = supernet({"methods": {"adapter": {"sizes": [4], "search": {"scale": [0.1, 1]}}}})
    outputs = []
    for scale in (0.1, 1):
        net.set_subnet(SubnetConfig.of({"adapter": [4] * DEPTH}, {"adapter": {"scale": scale}}))
        outputs.append(net.model(images))
    assert not torch.allclose(*outputs)
    fixed = supernet({"methods": {"adapter": {"sizes": [0, 4], "options": {"scale": "learnable"}}}})
    assert fixed.model(images).shape == (4, 5)
