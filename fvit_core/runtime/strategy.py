"""How the FViT's sample loop runs: a :class:`Runtime` chosen by the caller, never the maths.

Every strategy here changes speed and at most float rounding, each checked by an equivalence test
(tests/test_faithful_vit.py, tests/test_smoothing.py, tests/test_reliability.py):
- ``precision``: the networks in float32, bfloat16 or "auto" (runtime.precision);
- ``parallel``: forward batches on single-threaded CPU workers (runtime.workers);
- ``batch_size``: samples per forward pass (on a CPU at most :data:`CPU_BATCH` too).
:data:`REFERENCE_RUNTIME` is the plain loop: float32, one thread of control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from fvit_core.runtime.precision import PRECISION_CHOICES, resolve_precision
from fvit_core.errors import SettingError

# On a CPU: at most this many samples per forward pass, by the dtype the networks run in
# (docs/PERFORMANCE.md: the per-sample cost is flat between 24 and 128). The cut depends on
# neither the thread count nor the machine, and the batches are equal and even in number, so two
# workers finish together and the numbers are bit-identical whatever torch.set_num_threads says.
CPU_BATCH: dict[torch.dtype, int] = {torch.float32: 48, torch.bfloat16: 96}


@dataclass(frozen=True)
class Runtime:
    """Speed settings of the sample loop.

    Attributes:
        precision: "float32", "bfloat16" or "auto" (bfloat16 where native and the method is
            forward-only; runtime.precision.resolve_precision).
        batch_size: at most this many samples per forward pass.
        parallel: on a CPU, run forward batches on ``torch.get_num_threads()`` single-threaded
            workers (multistep stays in one thread: it draws from the caller's generator).
    """

    precision: str = "float32"
    batch_size: int = 256
    parallel: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise SettingError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SettingError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")

    def precision_for(self, device: torch.device, method: str) -> str:
        """The precision (a name of runtime.precision.PRECISIONS) the networks run in for
        ``method`` on ``device``: "auto" resolved."""
        return resolve_precision(self.precision, device, method)

    def workers(self, device: torch.device, mode: str) -> int:
        if not self.parallel or device.type != "cpu" or mode == "multistep":
            return 1
        return max(torch.get_num_threads(), 1)

    def forward_batches(self, n_images: int, first: int, count: int, device: torch.device, dtype: torch.dtype
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(image index, sample index) of samples first..first+count-1 of every image, image-major,
        cut into equal forward batches of at most ``batch_size`` (cut across images); on a CPU at
        most :data:`CPU_BATCH` too, and an even number of them."""
        total = n_images * count
        if device.type == "cpu":
            cap = min(self.batch_size, CPU_BATCH[dtype])
            n_batches = min(2 * -(-total // (2 * cap)), total)
        else:
            n_batches = -(-total // self.batch_size)
        size = -(-total // n_batches)
        for start in range(0, total, size):
            flat = torch.arange(start, min(start + size, total))
            yield flat // count, first + flat % count


REFERENCE_RUNTIME = Runtime(precision="float32", parallel=False)
