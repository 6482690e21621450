"""PyTorch DistributedDataParallel fed by stoker: every training process reads its own
shard of each epoch, augmented by its own workers.

Each process builds the same Loader with the same seed and ``shard=(rank, world_size)``:
the shards are disjoint and together cover the epoch once, whatever the worker counts.
Shards may differ by one sample, so the processes agree on the step count first (DDP
needs every process to take the same steps), and ``set_epoch`` selects the epoch, as
with a ``DistributedSampler``. Runs on the CPU with the gloo backend on loopback.

    python examples/ddp_train.py [--world-size 2] [--epochs 3] [--classes 20]
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import stoker
from stoker.augment import RandomApply, kanji_distort
from stoker.datasets import glyphs


def as_tensor_sample(distort):
    """The kanji recipe, then uint8 -> float32 in [0, 1], channels first."""

    def transform(sample, rng):
        image, label = distort(sample, rng)
        return (image.astype(np.float32) / 255).transpose(2, 0, 1), np.int64(label)

    return transform


def model_for(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 5, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 5, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(512, classes),
    )


def train(rank: int, world_size: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same initial weights in every process
    kanji = glyphs.load(classes=args.classes)
    transform = as_tensor_sample(RandomApply(kanji_distort(), p=0.5))
    model = torch.nn.parallel.DistributedDataParallel(model_for(args.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with stoker.Loader(kanji.train, batch_size=args.batch_size, transform=transform,
                       seed=0, shard=(rank, world_size), workers=args.workers) as loader:
        steps = torch.tensor(len(loader))
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)  # the same step count everywhere
        batches = loader.torch()
        for epoch in range(args.epochs):
            loader.set_epoch(epoch)
            total, correct, seen = torch.zeros(()), torch.zeros(()), torch.zeros(())
            for images, labels in itertools.islice(batches, int(steps)):
                optimizer.zero_grad()
                logits = model(images)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                loss.backward()  # DDP averages the gradients of all processes here
                optimizer.step()
                total += loss.detach() * len(labels)
                correct += (logits.argmax(1) == labels).sum()
                seen += len(labels)
            stats = torch.stack([total, correct, seen])
            dist.all_reduce(stats)
            if rank == 0:
                print(f"epoch {epoch + 1}: loss {stats[0] / stats[2]:.3f}, "
                      f"accuracy {stats[1] / stats[2]:.3f} over {int(stats[2])} samples "
                      f"({world_size} processes x {int(steps)} steps)", flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="loader workers per process")
    args = parser.parse_args()
    glyphs.load(classes=args.classes)  # render the data set once, before the processes
    mp.spawn(train, args=(args.world_size, free_port(), args), nprocs=args.world_size)


if __name__ == "__main__":
    main()
