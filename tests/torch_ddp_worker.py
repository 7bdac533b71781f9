"""One rank of the DistributedDataParallel test of gpuconv.torch (tests/test_torch_bridge.py).

Run as ``python tests/torch_ddp_worker.py OUT.npz`` with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set:
joins a gloo process group, wraps the converted ``small_model()`` in DDP, takes its share of
``global_batch()`` and saves its parameter gradients (after DDP's all-reduce) to OUT.npz. The test imports
the same two functions for its one-process reference.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn


def small_model() -> nn.Module:
    """conv-relu-maxpool, a depthwise conv, avgpool, a pointwise conv, linear: every converted kind, no
    BatchNorm (its batch statistics would differ per rank)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(8, 16, 1), nn.Flatten(), nn.Linear(16 * 2 * 2, 5))


def global_batch(size: int = 8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 8, 8, generator=generator), torch.randint(0, 5, (size,), generator=generator)


def main(out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import gpuconv.torch

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(gpuconv.torch.convert(small_model()))
        x, y = global_batch()
        share = len(x) // world
        mine = slice(rank * share, (rank + 1) * share)
        nn.functional.cross_entropy(model(x[mine]), y[mine]).backward()  # DDP averages the ranks' gradients
        np.savez(out_path, **{name: p.grad.numpy() for name, p in model.module.named_parameters()})
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
