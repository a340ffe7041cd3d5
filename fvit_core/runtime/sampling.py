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
         generator: torch.Generator | None, pairs: "AntitheticNoise | None" = None) -> Iterator[Job]:
    """The jobs of ``batches``; the noise of each is drawn here, in the calling thread and in batch
    order, so the numbers are reproducible whichever worker runs the batch. ``pairs``: antithetic
    noise (draw 2j + 1 of an image is the negation of its draw 2j), kept across calls."""
    for image_idx, sample_idx in batches:
        if not draw:
            normal = None
        elif pairs is not None:
            normal = pairs.normals(image_idx, sample_idx)
        else:
            normal = torch.randn((len(image_idx), *shape), generator=generator)
        yield Job(image_idx, sample_idx, normal)


class AntitheticNoise:
    """Standard normal noise in antithetic pairs: the even draw 2j of an image is fresh, the odd
    draw 2j + 1 is its negation. Fresh draws are made in row order, one per pair; a pair cut by a
    batch boundary is completed in the next batch (its even half waits here)."""

    def __init__(self, shape: tuple[int, ...], generator: torch.Generator | None):
        self.shape, self.generator = tuple(shape), generator
        self.waiting: dict[tuple[int, int], Tensor] = {}  # (image, pair) -> the even draw

    def normals(self, image_idx: Tensor, sample_idx: Tensor) -> Tensor:
        """(b, *shape) noise of the rows (image_idx[r], sample_idx[r])."""
        even = sample_idx % 2 == 0
        out = torch.empty((len(image_idx), *self.shape))
        out[even] = torch.randn((int(even.sum()), *self.shape), generator=self.generator)
        rows = {(int(i), int(s)): r for r, (i, s) in enumerate(zip(image_idx.tolist(), sample_idx.tolist()))}
        for (image, sample), row in rows.items():
            if sample % 2:
                partner = rows.get((image, sample - 1))
                out[row] = -(out[partner] if partner is not None else self.waiting.pop((image, sample // 2)))
            elif (image, sample + 1) not in rows:
                self.waiting[(image, sample // 2)] = out[row].clone()
        return out


def scheme_normals(n: int, shape: tuple[int, ...], generator: torch.Generator | None, *, antithetic: bool) -> Tensor:
    """(n, *shape) standard normal draws of one estimate in sample order, as the sample loop
    draws them for one image (independent, or antithetic pairs): the shared noise of common
    random numbers."""
    if not antithetic:
        return torch.randn((n, *shape), generator=generator)
    return AntitheticNoise(shape, generator).normals(torch.zeros(n, dtype=torch.long), torch.arange(n))


def sample_loop(work: Callable[[Job], R], accumulate: Callable[[R], int], *, runtime: Runtime, n_images: int,
                n_samples: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                generator: torch.Generator | None, draw_noise: bool, workers: int, looks: Sequence[int] = (),
                settled: Callable[[int], bool] | None = None, progress: ProgressFn | None = None,
                antithetic: bool = False) -> tuple[int, bool]:
    """Run ``work`` on every forward batch of ``n_samples`` draws per image and hand each result
    to ``accumulate`` (which returns how many draws it held), in order.

    After ``looks[i]`` draws per image (early stopping), ``settled(drawn)`` may end the loop; every
    image then stops at the same N. ``progress(done, total)`` is called after every batch.
    ``antithetic``: the noise comes in antithetic pairs.
    Returns (draws per image made, whether the loop stopped early).
    """
    total, done, drawn = n_images * n_samples, 0, 0
    pairs = AntitheticNoise(shape, generator) if antithetic else None  # a pair may span two looks
    for upto in sorted({*looks, n_samples}):
        batches = runtime.forward_batches(n_images, drawn, upto - drawn, device, dtype)
        for result in map_in_order(work, jobs(batches, shape, draw=draw_noise, generator=generator, pairs=pairs),
                                   workers):
            done += accumulate(result)
            if progress is not None:
                progress(done, total)
        drawn = upto
        if upto in looks and settled is not None and settled(drawn):
            if progress is not None:
                progress(total, total)
            return drawn, True
    return drawn, False
