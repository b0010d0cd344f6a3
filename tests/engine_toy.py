"""Tiny stand-ins for the engine tests: a colour->class dataset, a 1x1-conv segmentor, a method and a
loader that follow the furnace contracts, and a command-line entry for subprocess / torchrun runs.

    python tests/engine_toy.py --out DIR [--max-iters N] [--resume auto] [--then-eval] ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from furnace.datasets.batch import IMAGE_L, LABEL_L

NUM_CLASSES = 3
COLORS = np.array([[210, 40, 40], [40, 210, 40], [40, 40, 210]], np.uint8)
PALETTE = np.array([[128, 0, 0], [0, 128, 0], [0, 0, 128]], np.uint8)
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def make_sample(rng: np.random.RandomState, size: int = 32, ignore: bool = True):
    """HxWx3 uint8 image and HxW uint8 label: coloured rectangles whose colour is their class."""
    label = np.full((size, size), rng.randint(NUM_CLASSES), np.uint8)
    for _ in range(3):
        y, x = rng.randint(0, size - 8, 2)
        h, w = rng.randint(6, size // 2, 2)
        label[y:y + h, x:x + w] = rng.randint(NUM_CLASSES)
    image = COLORS[label].astype(np.int16) + rng.randint(-25, 26, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    if ignore:
        y, x = rng.randint(0, size - 4, 2)
        label[y:y + 4, x:x + 4] = 255
    return image, label


class ToyDataset:
    """The val-dataset contract: ``ds[i] -> {"image": HxWx3 uint8, "label": HxW uint8, "name": str}``."""

    def __init__(self, n: int, seed: int, size: int = 32, ignore: bool = True):
        rng = np.random.RandomState(seed)
        self.items = []
        for i in range(n):
            image, label = make_sample(rng, size, ignore)
            self.items.append({"image": image, "label": label, "name": f"toy_{seed}_{i:03d}"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def normalise(images: np.ndarray) -> torch.Tensor:
    """(B,H,W,3) uint8 -> (B,3,H,W) float32, ImageNet mean/std."""
    return torch.from_numpy((images.astype(np.float32) - MEAN) / STD).permute(0, 3, 1, 2).contiguous()


class ToyLoader:
    """The TrainLoader contract: ``.iters_per_epoch``, ``.epoch(epoch, start_iter)`` -> micro-batches.

    The order is a function of (seed, epoch, position) only. Like a torch DataLoader it draws from the
    global torch generator when an epoch's iterator starts (the engine must not let that leak into
    the method's random stream). ``delay`` seconds of sleep per micro-batch slow a run down for the
    signal test.
    """

    def __init__(self, dataset, global_batch: int, micro_batch: int = 0, seed: int = 0, rank: int = 0,
                 world_size: int = 1, delay: float = 0.0):
        self.dataset, self.seed, self.rank, self.world, self.delay = dataset, seed, rank, world_size, delay
        self.global_batch = global_batch
        self.per_process = global_batch // world_size
        self.micro = micro_batch or self.per_process
        self.iters_per_epoch = len(dataset) // global_batch

    def epoch(self, epoch: int, start_iter: int = 0):
        torch.rand(1)  # what DataLoader does for its base seed
        perm = np.random.RandomState(self.seed * 1000 + epoch).permutation(len(self.dataset))
        for it in range(start_iter, self.iters_per_epoch):
            ids = perm[it * self.global_batch:(it + 1) * self.global_batch]
            mine = ids[self.rank * self.per_process:(self.rank + 1) * self.per_process]
            for m in range(0, self.per_process, self.micro):
                sel = [self.dataset[i] for i in mine[m:m + self.micro]]
                if self.delay:
                    time.sleep(self.delay)
                yield {IMAGE_L: normalise(np.stack([s["image"] for s in sel])),
                       LABEL_L: torch.from_numpy(np.stack([s["label"] for s in sel]).astype(np.int64))}


class ToyNet(nn.Module):
    """Per-pixel segmentor (1x1 convs): (B,3,H,W) -> (B,C,H,W). Has the segmentor attributes
    ``arch``, ``num_classes`` and ``build_options``."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 8, bn: bool = True, dropout: float = 0.0):
        super().__init__()
        self.arch, self.num_classes = "toy", num_classes
        self.build_options = {"num_classes": num_classes, "width": width, "bn": bn, "dropout": dropout}
        self.conv1 = nn.Conv2d(3, width, 1, bias=not bn)
        self.norm = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.drop = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x, return_feature=False):
        feat = self.drop(F.relu(self.norm(self.conv1(x))))
        logits = self.classifier(feat)
        return (logits, feat) if return_feature else logits


class ToyMethod(nn.Module):
    """The method contract: ``method(batch)`` -> named scalar losses with ``"loss"`` the total.

    ``nan_at_call`` > 0 makes ``loss_aux`` (and so ``loss``) NaN from that forward call on;
    ``ready_file`` is created at forward call 3 (the signal test waits for it).
    """

    uses_unlabeled = False

    def __init__(self, net: ToyNet, nan_at_call: int = 0, ready_file: str = "", out_dir: str = ""):
        super().__init__()
        self.net = net
        self.nan_at_call, self.ready_file, self.calls, self.out_dir = nan_at_call, ready_file, 0, out_dir

    def forward(self, batch):
        self.calls += 1
        if self.ready_file and self.calls == 3:
            Path(self.ready_file).touch()
        logits = self.net(batch[IMAGE_L])
        sup = F.cross_entropy(logits, batch[LABEL_L], ignore_index=255)
        aux = 1e-3 * logits.float().pow(2).mean()
        if self.nan_at_call and self.calls >= self.nan_at_call:
            aux = aux * float("nan")
        return {"loss": sup + aux, "loss_sup": sup, "loss_aux": aux}

    def eval_network(self):
        return self.net

    def on_train_end(self, layout=None):
        Path(self.out_dir, "on_train_end.txt").write_text("done\n")


# ----------------------------------------------------------------------------- snapshot I/O stand-ins


def toy_save_snapshot(net, path, extra):
    from furnace.utils import atomic_save

    atomic_save({"format": "mgd-ssss.segmentor", "version": 2, "arch": net.arch, "num_classes": net.num_classes,
                 "options": dict(net.build_options), "state_dict": net.state_dict(), **extra}, path)


def toy_load_snapshot(path, map_location="cpu"):
    from furnace.utils import safe_load

    state = safe_load(path, map_location=map_location)
    net = ToyNet(**state["options"])
    net.load_state_dict(state["state_dict"])
    return net.eval()


def install_toy_snapshot_io():
    """Route the engine's snapshot writes/reads through the toy segmentor format."""
    from furnace.engine import checkpoint

    checkpoint.save_snapshot = toy_save_snapshot
    checkpoint.load_snapshot = toy_load_snapshot


def toy_config(out, world_size=1, **overrides):
    """The prepared config of the toy task (CPU, 3 classes, global batch 4, 2 epochs) for ``world_size`` processes."""
    import furnace.methods  # noqa: F401 (registers the methods a config may name)
    from furnace.config import prepare, synthetic_config

    C = synthetic_config()
    C.update(output_dir=str(out), num_classes=NUM_CLASSES, global_batch=4, epochs=2, check_data=False,
             device="cpu", method="supervised", eval_crop=24, eval_batch=2, num_workers=0, log_every=1,
             tb_images_every=0, lr=0.1, weight_decay=1e-4, seed=0, snapshot_last=1, snapshot_every=0)
    C.update(overrides)
    return prepare(C, world_size=world_size)


def build_toy(cfg, *, n_train=16, n_val=5, bn=True, dropout=0.0, nan_at_call=0, ready_file="", delay=0.0,
              ignore=True, rank=0, world_size=1, net_seed=0):
    """(method, loader, val_dataset) for ``cfg`` on this process."""
    torch.manual_seed(net_seed)
    method = ToyMethod(ToyNet(bn=bn, dropout=dropout), nan_at_call=nan_at_call, ready_file=ready_file,
                       out_dir=cfg.output_dir)
    train_set = ToyDataset(n_train, seed=1, ignore=ignore)
    loader = ToyLoader(train_set, cfg.global_batch, cfg.micro_batch, seed=cfg.seed, rank=rank,
                       world_size=world_size, delay=delay)
    return method, loader, ToyDataset(n_val, seed=2)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--resume", default="")
    p.add_argument("--max-iters", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=0)
    p.add_argument("--bn", type=int, default=1)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--ready-file", default="")
    p.add_argument("--then-eval", action="store_true")
    p.add_argument("--result", default="")
    args = p.parse_args(argv)

    from furnace.run import eval_main, train_main

    install_toy_snapshot_io()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg = toy_config(args.out, world, epochs=args.epochs, micro_batch=args.micro_batch)
    method, loader, val = build_toy(cfg, bn=bool(args.bn), delay=args.delay, ready_file=args.ready_file,
                                    rank=rank, world_size=world)
    argv_train = [f"max_iters={args.max_iters}"] + (["--resume", args.resume] if args.resume else [])
    res = train_main(cfg, argv_train, method=method, loader=loader, val_dataset=val)
    out = {"status": res["status"], "global_iter": res["global_iter"],
           "confusion": res["eval"]["confusion"].tolist(), "miou": res["miou"], "world": world}
    # what this process evaluated with: its network's buffers (BN running statistics)
    buffers = [b.double().sum().item() for b in method.net.buffers() if b.is_floating_point()]
    if args.result:
        Path(f"{args.result}.rank{rank}").write_text(json.dumps(buffers))
    if args.then_eval:
        ev = eval_main(cfg, ["-e", "last"], val_dataset=val)
        out["eval_main"] = ev["results"][ev["last"]]
    if rank == 0 and args.result:
        Path(args.result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
