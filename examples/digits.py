"""Does grouping help? Prune a small residual CNN trained on scikit-learn's digits to half its
MACs with four criteria, fine-tune briefly, compare accuracy over several seeds.

    python examples/digits.py                 # the table in docs/digits.md (minutes)
    python examples/digits.py --seeds 1 --epochs 3    # a quick look

Methods, each from the same trained network and with the same budget of extra epochs
(4 at a learning rate of 3e-3) before pruning, then 1 epoch of fine-tuning:
  random       random scores per unit
  per-layer    L2 of the root layer's filters only (no grouping: the usual per-layer magnitude)
  grouped      L2 over every coupled slice of the group (DepGraph)
  grouped+GS   grouped L2 after the extra epochs are spent training with the group-sparsity
               penalty (the paper's method); the others spend them training without it
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import depgraph_ext as dx  # noqa: E402

METHODS = ("random", "per-layer", "grouped", "grouped+GS")


class Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.conv2, self.bn2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class DigitsNet(nn.Module):
    """Residual CNN for 8x8 digits: stem, two blocks at 8x8, a wider stage at 4x4, classifier."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stage1 = nn.Sequential(Block(width), Block(width))
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.stage2 = Block(2 * width)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def load(subset: int | None = None, seed: int = 0):
    """Digits scaled to [0, 1], a fixed 75/25 split (stratified by a seeded shuffle)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if subset is not None:
        order = order[:subset]
    cut = int(0.75 * len(order))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def train(model, data, epochs: int, seed: int, lr: float = 3e-3, regulariser=None):
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            if regulariser is not None:
                loss = loss + regulariser.penalty()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, data) -> float:
    x, y = data
    return float((model.eval()(x).argmax(1) == y).float().mean())


def importance_of(method: str, seed: int):
    if method == "random":
        return dx.RandomImportance(seed)
    if method == "per-layer":
        return dx.MagnitudeImportance(2, reduction="first")
    return dx.MagnitudeImportance(2)


def run(
    seeds: int = 5,
    epochs: int = 12,
    extra: int = 4,
    finetune: int = 1,
    target_macs: float = 0.5,
    lam: float = 1e-2,
    subset: int | None = None,
    width: int = 16,
    log=print,
) -> dict:
    """Returns {"dense": [...], method: {"pruned": [...], "finetuned": [...], "macs": [...]}}."""
    out: dict = {
        "dense": [],
        **{m: {"trained": [], "pruned": [], "finetuned": [], "macs": []} for m in METHODS},
    }
    train_data, test_data = load(subset)
    example = train_data[0][:2]
    for seed in range(seeds):
        torch.manual_seed(seed)
        dense = train(DigitsNet(width), train_data, epochs, seed)
        out["dense"].append(accuracy(dense, test_data))
        _, macs_dense = dx.count_params_and_macs(dense, example)
        for method in METHODS:
            model = copy.deepcopy(dense)
            reg = None
            if method == "grouped+GS":
                reg = dx.GroupSparsity(model, example, lam=lam, alpha=16)
            train(model, train_data, extra, seed + 1000, lr=3e-3, regulariser=reg)
            out[method]["trained"].append(accuracy(model, test_data))
            dx.prune(
                model, example, target_macs=target_macs, importance=importance_of(method, seed)
            )
            _, macs = dx.count_params_and_macs(model, example)
            out[method]["macs"].append(macs / macs_dense)
            out[method]["pruned"].append(accuracy(model, test_data))
            train(model, train_data, finetune, seed + 2000, lr=1e-3)
            out[method]["finetuned"].append(accuracy(model, test_data))
        log(
            f"seed {seed}: dense {out['dense'][-1]:.3f}; "
            + "; ".join(
                f"{m} {out[m]['pruned'][-1]:.3f} -> {out[m]['finetuned'][-1]:.3f}" for m in METHODS
            )
        )
    return out


def table(results: dict) -> str:
    def fmt(values) -> str:
        v = np.asarray(values) * 100
        spread = v.std(ddof=1) if len(v) > 1 else math.nan
        return f"{v.mean():.1f} ± {spread:.1f}" if len(v) > 1 else f"{v.mean():.1f}"

    lines = [
        "| method | MACs kept | accuracy before pruning (%) | right after pruning (%) | "
        "after fine-tuning (%) |",
        "|---|---|---|---|---|",
        f"| dense (no extra epochs, no pruning) | 100% | {fmt(results['dense'])} | - | - |",
    ]
    for m in METHODS:
        r = results[m]
        lines.append(
            f"| {m} | {np.mean(r['macs']):.0%} | {fmt(r['trained'])} | "
            f"{fmt(r['pruned'])} | {fmt(r['finetuned'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=12, help="training of the dense network")
    ap.add_argument(
        "--extra",
        type=int,
        default=4,
        help="extra epochs before pruning (with the penalty for grouped+GS)",
    )
    ap.add_argument("--finetune", type=int, default=1)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--lam", type=float, default=1e-2, help="group-sparsity weight")
    args = ap.parse_args(argv)
    t0 = time.time()
    results = run(
        args.seeds,
        args.epochs,
        args.extra,
        args.finetune,
        args.target_macs,
        args.lam,
        width=args.width,
    )
    print()
    print(table(results))
    print(f"\n{args.seeds} seeds, {time.time() - t0:.0f} s, torch {torch.__version__}")


if __name__ == "__main__":
    main()
