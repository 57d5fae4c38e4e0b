"""E2VPT pruning: token pruning equals a model built with the kept tokens, segment pruning zeroes exactly
the pruned segments, counts and saved adapters hold what is left, and `autopeft prune` writes a run that
rewinds (retrains) the pruned model."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import autopeft
from autopeft.build import build_model
from autopeft.data import from_arrays
from autopeft.errors import ConfigError
from autopeft.pruning import read_prune_run
from autopeft.runconfig import load_run_config
from autopeft.runkey import config_key
from tests.conftest import WIDTH, randomise_trainable, tiny_vit
from tests.test_errors import assert_unchanged, snapshot
from tests.test_train import write_config


@pytest.fixture(scope="module")
def task():
    """40 random 32 px training images of 5 classes (the tiny ViT's head)."""
    rng = np.random.default_rng(0)
    arrays = {
        split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 5)
        for split, n in (("train", 40), ("val", 10), ("test", 10))
    }
    return from_arrays("toy", lambda: arrays, 32)


def prompted(methods: dict) -> torch.nn.Module:
    model = autopeft.apply(tiny_vit(), copy.deepcopy(methods))
    randomise_trainable(model)
    return model


@pytest.mark.parametrize(
    "methods",
    [{"vpt": {"length": [4, 2, 5]}}, {"vpt": {"length": 4, "mode": "shallow"}}, {"kv_prompt": {"shared": False}}],
    ids=["vpt-deep", "vpt-shallow", "kv_prompt"],
)
def test_token_pruning_equals_a_model_built_with_the_kept_tokens(methods, task, images):
    model = prompted(methods)
    method, tensors = ("vpt", ["prompt"]) if "vpt" in methods else ("kv_prompt", ["prompt_k", "prompt_v"])
    wrappers = [m for m in model.modules() if getattr(m, "method", None) == method and m.size]
    original = [{name: getattr(m, name).detach().clone() for name in tensors} for m in wrappers]
    result = autopeft.prune(model, task, 0.5, "token", batch_size=16)
    assert [(layer.method, layer.block) for layer in result.layers] == [(method, m.block) for m in wrappers]
    assert all(len(layer.tokens) == len(layer.token_scores) - len(layer.token_scores) // 2 for layer in result.layers)
    reference = autopeft.apply(tiny_vit(), copy.deepcopy(model.autopeft_methods))
    built = [m for m in reference.modules() if getattr(m, "method", None) == method and m.size]
    dim = 0 if method == "vpt" else 1
    with torch.no_grad():
        for wrapper, layer, before in zip(built, result.layers, original, strict=True):
            for name in tensors:
                getattr(wrapper, name).copy_(before[name].index_select(dim, torch.tensor(layer.tokens)))
    assert (model(images) - reference(images)).abs().max().item() <= 1e-5
    kept = sum(len(layer.tokens) for layer in result.layers)
    per_token = WIDTH * len(tensors)
    assert result.params_after == autopeft.count_trainable(model) == kept * per_token
    assert result.params_before == sum(len(layer.token_scores) for layer in result.layers) * per_token
    assert [p.shape[dim] for m in wrappers for p in m.own_parameters()] == [
        len(layer.tokens) for layer in result.layers for _ in tensors
    ]  # physically shrunk: a removed token costs no compute


@pytest.mark.parametrize("level", ["segment", "both"])
def test_segment_pruning_zeroes_exactly_the_pruned_segments(level, task, images):
    model = prompted({"vpt": {"length": 4}})
    original = [block.prompt.detach().clone() for block in model.blocks]
    result = autopeft.prune(model, task, 0.5, level, segments=4, batch_size=16)
    reference = autopeft.apply(tiny_vit(), copy.deepcopy(model.autopeft_methods))
    with torch.no_grad():
        for block, layer, before in zip(reference.blocks, result.layers, original, strict=True):
            keep = torch.tensor([[c == "1" for c in row] for row in layer.segments["prompt"]])
            block.prompt.copy_(before[layer.tokens] * keep.repeat_interleave(WIDTH // 4, dim=1))
    assert (model(images) - reference(images)).abs().max().item() <= 1e-5
    # 4 tokens of 4 segments per block: half the segments go; with "both" half the tokens first
    kept_segments = 8 if level == "segment" else 4
    assert [sum(row.count("1") for row in layer.segments["prompt"]) for layer in result.layers] == [kept_segments] * 3
    assert result.params_before == 3 * 4 * WIDTH
    assert result.params_after == autopeft.count_trainable(model) == 3 * kept_segments * WIDTH // 4
    assert [tuple(p.shape) for p in model.parameters() if p.requires_grad][:3] == [(kept_segments, WIDTH // 4)] * 3


def test_importance_is_nonnegative_and_zero_for_a_token_that_cannot_matter(task):
    model = prompted({"vpt": {"length": 4}})
    with torch.no_grad():
        model.blocks[0].prompt[2] = 0.0  # rho * 0 is 0 whatever rho: the loss cannot depend on its mask
    result = autopeft.prune(model, task, 0.25, "both", segments=4, batch_size=16)
    scores = result.layers[0].token_scores
    assert scores[2] == 0.0 and min(scores[:2] + scores[3:]) > 0.0
    assert result.layers[0].tokens == [0, 1, 3]
    assert all(s >= 0 for layer in result.layers for s in layer.token_scores)
    segment_scores = [s for layer in result.layers for rows in layer.segment_scores["prompt"] for s in rows]
    assert len(segment_scores) == 3 * 3 * 4 and min(segment_scores) >= 0.0


def test_random_importance_removes_the_same_counts_at_seeded_random_and_is_recorded(task, tmp_path):
    model = prompted({"vpt": {"length": 4}})
    before = [block.prompt.detach().clone() for block in model.blocks]
    result = autopeft.prune(model, task, 0.5, "token", importance="random", seed=0)
    # torch.rand(4) three times from a generator seeded 0: [.50 .77 .09 .13], [.31 .63 .49 .90], [.46 .63 .35 .40]
    assert [layer.tokens for layer in result.layers] == [[0, 1], [1, 3], [0, 1]]
    assert result.layers[0].token_scores == pytest.approx([0.4963, 0.7682, 0.0885, 0.1320], abs=1e-4)
    assert (result.importance, result.seed, result.compute.train_images) == ("random", 0, 0)
    assert (result.params_before, result.params_after, autopeft.count_trainable(model)) == (384, 192, 192)
    for block, layer, prompt in zip(model.blocks, result.layers, before, strict=True):
        assert torch.equal(block.prompt, prompt[layer.tokens])
    other = autopeft.prune(prompted({"vpt": {"length": 4}}), task, 0.5, "token", importance="random", seed=1)
    assert [layer.tokens for layer in other.layers] == [[0, 3], [1, 3], [0, 2]]
    (tmp_path / "prune.json").write_text(json.dumps({"run": "r", **dataclasses.asdict(result)}))
    assert read_prune_run(tmp_path) == result
    gradient = autopeft.prune(prompted({"vpt": {"length": 4}}), task, 0.5, batch_size=16)
    assert (gradient.importance, gradient.seed, gradient.compute.train_images) == ("gradient", None, 40)
    with pytest.raises(ConfigError) as info:
        autopeft.prune(model, task, 0.5, importance="uniform")
    assert str(info.value) == "prune importance: got 'uniform'; allowed: gradient, random"


@pytest.mark.parametrize(
    "methods",
    [{"vpt": {"length": [4, 0, 3]}, "kv_prompt": {"length": 2, "shared": False}}, {"vpt": {"length": 3}}],
    ids=["vpt+kv_prompt", "vpt"],
)
def test_save_load_holds_only_what_is_left_and_rebuilds_the_masks(methods, task, images, tmp_path):
    model = prompted(methods)
    result = autopeft.prune(model, task, 0.5, "both", segments=4, batch_size=16)
    expected = model(images)
    autopeft.save_adapter(model, tmp_path)
    tensors = load_file(tmp_path / "adapter.safetensors")
    prompts = {name: t for name, t in tensors.items() if "prompt" in name}
    assert sum(t.numel() for t in prompts.values()) == result.params_after == autopeft.count_trainable(model)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert len(saved["segment_masks"]) == sum(len(layer.segments) for layer in result.layers)
    restored = autopeft.load_adapter(tiny_vit(), tmp_path)
    assert torch.equal(restored(images), expected)
    assert autopeft.count_trainable(restored) == result.params_after
    assert restored.autopeft_methods == model.autopeft_methods


def test_a_failed_load_of_a_pruned_adapter_changes_nothing(task, tmp_path):
    model = prompted({"vpt": {"length": 2}})
    autopeft.prune(model, task, 0.5, "segment", segments=4, batch_size=16)
    autopeft.save_adapter(model, tmp_path)
    other = tiny_vit()
    with pytest.raises(ConfigError) as info:
        autopeft.load_adapter(autopeft.apply(other, {"vpt": {"length": 2}}), tmp_path)
    assert str(info.value).endswith(
        "adapter_config.json: methods ['vpt'] differ from the model's ['vpt']: vpt is {'length': [2, 2, 2], 'mode': "
        "'deep', 'dropout': 0.1} in the file, {'length': 2, 'mode': 'deep', 'dropout': 0.1} in the model"
    )
    other = tiny_vit()
    other.reset_classifier(3)  # the head's shape is checked after the masks are fixed
    autopeft.apply(other, copy.deepcopy(model.autopeft_methods))
    before = snapshot(other)
    with pytest.raises(ConfigError, match=r"tensor 'head.bias' is \(5,\) in the file but \(3,\)"):
        autopeft.load_adapter(other, tmp_path)
    assert_unchanged(other, before)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["segment_masks"][0]["keep"][0] = "101"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as info:
        autopeft.load_adapter(tiny_vit(), tmp_path)
    assert str(info.value).endswith(
        "adapter_config.json: segment mask for vpt block 0 tensor 'prompt': allowed: 2 strings of 0 and 1, all of "
        "one length dividing the width 32"
    )


def test_bad_settings_are_one_line_naming_the_option(task):
    model = prompted({"vpt": {"length": 2}})
    for fraction in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError) as info:
            autopeft.prune(model, task, fraction)
        assert str(info.value) == f"prune fraction: got {fraction!r}; allowed: a number with 0 < fraction < 1"
    with pytest.raises(ConfigError) as info:
        autopeft.prune(model, task, 0.5, "tokens")
    assert str(info.value) == "prune level: got 'tokens'; allowed: token, segment, both"
    with pytest.raises(ConfigError) as info:
        autopeft.prune(model, task, 0.5, "segment", segments=5)
    assert str(info.value) == (
        "prune segments: got 5; allowed: a positive integer dividing the prompt width 32 (vpt block 0)"
    )
    with pytest.raises(ConfigError) as info:
        autopeft.prune(autopeft.apply(tiny_vit(), {"lora": {}}), task, 0.5)
    assert str(info.value) == (
        "prune: the model has no prompt tokens (its methods: lora); allowed: a model with vpt or kv_prompt "
        "applied at a length above 0"
    )
    autopeft.prune(model, task, 0.5, "segment", segments=4, batch_size=40)
    with pytest.raises(ConfigError) as info:
        autopeft.prune(model, task, 0.5, "segment", segments=8)
    assert str(info.value) == "prune segments: got 8, but vpt block 0 is already cut into 4 segments; allowed: 4"


def test_cli_prunes_a_run_into_a_run_that_rewinds_it(tmp_path, run_cli):
    train = {"epochs": 1, "batch_size": 100, "lr": 0.003, "warmup_epochs": 0}
    config = write_config(tmp_path, methods={"vpt": {"length": 4}}, train=train)
    run, pruned = tmp_path / "run", tmp_path / "pruned"
    assert run_cli("train", str(config), "--out", str(run))[0] == 0
    args = ["--fraction", "0.5", "--level", "both", "--segments", "4", "--out", str(pruned)]
    assert run_cli("prune", str(run), *args) == (0, "")
    record = json.loads((pruned / "prune.json").read_text())
    assert (record["run"], record["params_before"], record["params_after"]) == (str(run), 2 * 4 * 32, 2 * 4 * 8)
    rewind = yaml.safe_load((pruned / "config.yaml").read_text())
    assert rewind["methods"]["vpt"]["length"] == [2, 2] and rewind["init"] == str((pruned / "pruned").resolve())
    assert rewind["train"] == yaml.safe_load((run / "config.yaml").read_text())["train"]
    start, _, _ = build_model(load_run_config(pruned / "config.yaml"))  # the rewound run starts from the pruned weights
    saved = load_file(pruned / "pruned" / "adapter.safetensors")
    assert all(torch.equal(p, saved[n]) for n, p in start.named_parameters() if p.requires_grad)
    assert config_key(load_run_config(pruned / "config.yaml")) != config_key(
        load_run_config(pruned / "config.yaml", ["init=null"])
    )
    assert run_cli("train", str(pruned / "config.yaml"), "--out", str(pruned))[0] == 0
    result = json.loads((pruned / "result.json").read_text())
    assert result["trainable_params"] == 2 * 4 * 8 and result["methods"]["vpt"]["length"] == [2, 2]
    (pruned / "result.json").unlink()  # as if killed after its last checkpoint: resumes like any run
    assert run_cli("train", str(pruned / "config.yaml"), "--out", str(pruned), "--resume")[0] == 0
    assert json.loads((pruned / "result.json").read_text())["val_acc"] == result["val_acc"]
    assert run_cli("export", str(pruned), "--out", str(tmp_path / "adapter"))[0] == 0
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == (pruned / "adapter_config.json").read_text()
    code, err = run_cli("export", str(pruned), "--out", str(tmp_path / "merged.safetensors"), "--merge")
    assert code == 2 and err.endswith(
        "export --merge: vpt cannot be folded into timm weights; export without --merge\n"
    )
    code, err = run_cli("prune", str(run), *args)
    assert code == 2 and err.endswith(
        f"{pruned}: already holds files; allowed: a new or empty folder for autopeft prune's output\n"
    )
    control = ["--fraction", "0.5", "--importance", "random", "--seed", "3", "--out", str(tmp_path / "random")]
    assert run_cli("prune", str(run), *control) == (0, "")
    record = json.loads((tmp_path / "random" / "prune.json").read_text())
    assert (record["importance"], record["seed"], record["params_after"]) == ("random", 3, 2 * 4 * 32 // 2)
