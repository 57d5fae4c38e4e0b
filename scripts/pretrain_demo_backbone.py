"""Pretrain autopeft's shipped demo ViT from scratch on Fashion-MNIST (CPU, ~5.5 min/epoch on 2 cores).

    apt-get install -y dataset-fashion-mnist
    HF_HUB_OFFLINE=1 python scripts/pretrain_demo_backbone.py

``--init FILE`` continues from earlier backbone weights (a new head, a new schedule); the new
model card then keeps the earlier card under "Initialisation", so every stage of the recipe
stays written down. The shipped weights are four stages (10 + 6 + 3 + 4 = 23 epochs, about 2 h 10 min
on 2 idle cores in all); their card lists each command.
Writes ``autopeft/assets/<name>.safetensors`` (float16 weights, no head) and its model card
``autopeft/assets/<name>.md`` (recipe, epochs, test accuracy, sha256, data licence).
Grayscale images are padded from 28 to 32 px and repeated to 3 channels, so the
backbone takes the same RGB input as any timm ViT.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from autopeft.backbones import DEMO_BACKBONES, build_demo_architecture

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ASSETS = Path(__file__).resolve().parents[1] / "autopeft" / "assets"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): big-endian dims after a 4-byte magic."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(read_idx(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(read_idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    return F.pad(images, (2, 2, 2, 2)).unsqueeze(1), labels  # uint8 (N, 1, 32, 32)


def to_input(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((images.float() / 255.0 - mean) / std).expand(-1, 3, -1, -1)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 3 px (zero padding)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (3, 3, 3, 3))
    dx, dy = torch.randint(0, 7, (2,), generator=generator).tolist()
    return padded[..., dy : dy + 32, dx : dx + 32]


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> float:
    model.eval()
    correct = sum(
        (model(to_input(images[i : i + 500], mean, std)).argmax(-1) == labels[i : i + 500]).sum().item()
        for i in range(0, len(images), 500)
    )
    return 100.0 * correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="vit_demo_fmnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="start from these backbone weights (safetensors, no head)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many training images (smoke test)")
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "autopeft-pretrain")
    parser.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint in --work-dir")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(args.seed)
    config = DEMO_BACKBONES[args.name]
    mean, std = config["mean"][0], config["std"][0]
    model = build_demo_architecture(args.name, num_classes=10)
    earlier_card = initialise(model, args.init) if args.init else ""
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    if args.limit:
        train_x, train_y = train_x[: args.limit], train_y[: args.limit]
    steps_per_epoch = len(train_x) // args.batch_size
    total = steps_per_epoch * args.epochs
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "pos_embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    start, step, history, first_epoch = time.time(), 0, [], 0
    checkpoint = args.work_dir / f"{args.name}-last.pt"
    if args.resume and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        step, history, first_epoch = saved["step"], saved["history"], saved["epoch"]
        start -= saved["seconds"]
        print(f"resumed after epoch {first_epoch} from {checkpoint}", flush=True)
    for epoch in range(first_epoch, args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for batch in range(steps_per_epoch):
            index = order[batch * args.batch_size : (batch + 1) * args.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, int(args.warmup_epochs * steps_per_epoch), args.lr)
            inputs = to_input(augment(train_x[index], generator), mean, std)
            loss = F.cross_entropy(model(inputs), train_y[index], label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
        test_acc = accuracy(model, test_x, test_y, mean, std)
        history.append({"epoch": epoch + 1, "loss": round(loss.item(), 4), "test_acc": round(test_acc, 2)})
        print(json.dumps({**history[-1], "minutes": round((time.time() - start) / 60, 1)}), flush=True)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
        save_atomic(
            {**state, "step": step, "history": history, "epoch": epoch + 1, "seconds": time.time() - start}, checkpoint
        )
    write_assets(args, model, history, (time.time() - start) / 60, earlier_card)


def initialise(model: torch.nn.Module, weights: Path) -> str:
    """Load backbone weights (every tensor but the head must match); return their model card's text."""
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise SystemExit(f"{weights}: does not fit this architecture (missing {missing}, unexpected {unexpected})")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = weights.with_suffix(".md")
    earlier = card.read_text() if card.is_file() else "(no model card found beside the weights)\n"
    return f"\n## Initialisation\n\nStarted from `{weights.name}` (sha256 `{digest}`), whose card was:\n\n" + "\n".join(
        f"> {line}" if line else ">" for line in earlier.rstrip().splitlines()
    )


def save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def write_assets(
    args: argparse.Namespace, model: torch.nn.Module, history: list[dict], minutes: float, earlier_card: str
) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    weights = ASSETS / f"{args.name}.safetensors"
    state = {k: v.half().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(state, str(weights), metadata={"name": args.name, "format": "pt"})
    weights.chmod(0o644)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    config = DEMO_BACKBONES[args.name]
    start = f"initialised from `{args.init.name}` (see Initialisation)" if args.init else "from scratch"
    command = f"--epochs {args.epochs} --lr {args.lr} --warmup-epochs {args.warmup_epochs} --seed {args.seed}"
    command += " --init <the earlier weights> (first regenerate them as their card says)" if args.init else ""
    card = f"""# {args.name}: autopeft's offline demo backbone

A ViT ({config["timm"]["embed_dim"]} wide, {config["timm"]["depth"]} blocks, {config["timm"]["num_heads"]} heads,
patch {config["timm"]["patch_size"]}, 32 px RGB input) pretrained from scratch on Fashion-MNIST by
`scripts/pretrain_demo_backbone.py`, so that autopeft's demo runs without any download.

- File: `{weights.name}`, float16, classifier head removed, {weights.stat().st_size / 1e6:.2f} MB
- sha256: `{digest}`
- Data: Fashion-MNIST (Zalando Research, MIT licence), Debian package `dataset-fashion-mnist`;
  60,000 training images, 28 px grayscale padded to 32 px and repeated to 3 channels.
- Normalisation (in the backbone's pretrained config): mean {config["mean"]}, std {config["std"]}.
- Recipe: AdamW lr {args.lr} (linear warm-up {args.warmup_epochs} epoch, cosine decay), weight decay
  {args.weight_decay} (not on norms, biases, position embedding), batch {args.batch_size}, label smoothing
  {args.label_smoothing}, gradient clipping 1.0, random horizontal flip and +-3 px shift, {args.epochs} epochs
  {start}, seed {args.seed}, 2 CPU threads; {minutes:.0f} minutes of wall time (on a machine also running other jobs).
- Fashion-MNIST test accuracy after the final epoch: **{history[-1]["test_acc"]:.2f}%** (10,000 test images;
  the final epoch is reported, no selection on the test split).

Per epoch: {json.dumps(history)}

Regenerate: `HF_HUB_OFFLINE=1 python scripts/pretrain_demo_backbone.py {command}`.
{earlier_card}"""
    (ASSETS / f"{args.name}.md").write_text(card)
    print(f"wrote {weights} ({digest})")


if __name__ == "__main__":
    main()
