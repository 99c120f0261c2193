"""Data order that does not depend on the number of processes, and that a resumed run can skip into.

One optimizer step consumes one *global batch* of ``batch_size`` training items (32 in the papers). The
items of every epoch are one permutation drawn from ``(seed, epoch)``; global batch ``s`` is the slice
``[s * batch_size, (s + 1) * batch_size)``. It is cut into ``world_size * accumulation`` micro-batches of
``micro_batch_size`` items; process ``rank`` runs micro-batches ``rank * accumulation ... + accumulation - 1``
one after the other, accumulating gradients, and DDP averages the processes' gradients.

So 2 processes x 1 micro-batch and 1 process x 2 accumulated micro-batches see the very same micro-batches
(and BatchNorm statistics, which are per micro-batch, as in LAVT's per-GPU BatchNorm), and a run resumed
at step ``s`` starts its sampler at ``s`` without loading the consumed batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def plan_batches(batch_size: int, world_size: int, micro_batch_size: int | None) -> tuple[int, int]:
    """(micro-batch size, accumulation steps per process) reaching the global ``batch_size``.

    ``micro_batch_size`` is the most items one process runs per forward (``None``: ``batch_size /
    world_size``); the accumulation is the smallest that fits. Raises ValueError when the global batch
    cannot be split evenly.
    """
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size {batch_size} is not divisible by the {world_size} processes; "
            f"choose a batch size that is a multiple of the process (GPU) count"
        )
    per_rank = batch_size // world_size
    limit = per_rank if not micro_batch_size else min(int(micro_batch_size), per_rank)
    for accumulation in range(1, per_rank + 1):
        if per_rank % accumulation == 0 and per_rank // accumulation <= limit:
            return per_rank // accumulation, accumulation
    raise AssertionError("unreachable: accumulation = per_rank always fits")


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` training items in ``epoch`` (the same on every process and every rerun)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


def micro_seed(seed: int, epoch: int, step: int, micro: int) -> int:
    """Seed of the torch RNG (dropout) for global micro-batch ``micro`` of ``step``: rank- and resume-free."""
    return int(np.random.SeedSequence([seed, epoch, step, micro]).generate_state(1, np.uint64)[0] >> 1)


class StepSampler(Sampler[list[int]]):
    """The micro-batches (lists of dataset indices) process ``rank`` runs in one epoch, from ``start_step``."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        micro_batch_size: int,
        accumulation: int,
        steps: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        start_step: int = 0,
    ):
        if steps * batch_size > n:
            raise ValueError(f"{steps} steps of {batch_size} items need more than the {n} items available")
        self.n, self.batch_size, self.micro, self.accumulation = n, batch_size, micro_batch_size, accumulation
        self.steps, self.seed, self.epoch, self.rank, self.start_step = steps, seed, epoch, rank, start_step

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch)
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            for a in range(self.accumulation):
                k = self.rank * self.accumulation + a
                yield batch[k * self.micro : (k + 1) * self.micro].tolist()
