"""The FViT's sample loop as a runtime strategy: batches, noise order, workers, early-stop looks,
progress.

The method (method.faithful_vit) says what one draw is and how draws are summed; this module
says how the N draws per image are cut into forward batches (:meth:`Runtime.forward_batches`),
in which order their noise is drawn (in the calling thread, batch after batch, so the numbers do
not depend on which worker runs a batch), on how many workers they run (runtime.workers), and
when the loop looks at its sums to stop early. Memory does not grow with N: each batch's
results are handed to ``accumulate`` as they come, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor

from fvit_core.runtime.strategy import Runtime
from fvit_core.runtime.workers import map_in_order

R = TypeVar("R")
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Job:
    """One forward batch: which draw of which image each row is, and its standard normal noise
    ((b, 3, H, W), None when the caller supplies the noise or the mode adds none)."""

    image_idx: Tensor
    sample_idx: Tensor
    normal: Tensor | None


def jobs(batches: Iterator[tuple[Tensor, Tensor]], shape: tuple[int, ...], *, draw: bool,
         generator: torch.Generator | None) -> Iterator[Job]:
    """The jobs of ``batches``; the noise of each is drawn here, in the calling thread and in batch
    order, so the numbers are reproducible whichever worker runs the batch."""
    for image_idx, sample_idx in batches:
        normal = torch.randn((len(image_idx), *shape), generator=generator) if draw else None
        yield Job(image_idx, sample_idx, normal)


def sample_loop(work: Callable[[Job], R], accumulate: Callable[[R], int], *, runtime: Runtime, n_images: int,
                n_samples: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                generator: torch.Generator | None, draw_noise: bool, workers: int, looks: Sequence[int] = (),
                settled: Callable[[int], bool] | None = None, progress: ProgressFn | None = None) -> tuple[int, bool]:
    """Run ``work`` on every forward batch of ``n_samples`` draws per image and hand each result
    to ``accumulate`` (which returns how many draws it held), in order.

    After ``looks[i]`` draws per image (early stopping), ``settled(drawn)`` may end the loop; every
    image then stops at the same N. ``progress(done, total)`` is called after every batch.
    Returns (draws per image made, whether the loop stopped early).
    """
    total, done, drawn = n_images * n_samples, 0, 0
    for upto in sorted({*looks, n_samples}):
        batches = runtime.forward_batches(n_images, drawn, upto - drawn, device, dtype)
        for result in map_in_order(work, jobs(batches, shape, draw=draw_noise, generator=generator), workers):
            done += accumulate(result)
            if progress is not None:
                progress(done, total)
        drawn = upto
        if upto in looks and settled is not None and settled(drawn):
            if progress is not None:
                progress(total, total)
            return drawn, True
    return drawn, False
