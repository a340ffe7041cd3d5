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

from fvit_core.protocol.settings import Settings, bounded, one_of, setting
from fvit_core.runtime.precision import PRECISION_CHOICES, resolve_precision

# On a CPU: at most this many samples per forward pass, by the dtype the networks run in
# (docs/PERFORMANCE.md: the per-sample cost is flat between 24 and 128). The cut depends on
# neither the thread count nor the machine, and the batches are equal and even in number, so two
# workers finish together and the numbers are bit-identical whatever torch.set_num_threads says.
CPU_BATCH: dict[torch.dtype, int] = {torch.float32: 48, torch.bfloat16: 96}


@dataclass(frozen=True, kw_only=True)
class Runtime(Settings):
    """The runtime settings: how the networks run, never what they compute (up to float rounding).

    Attributes:
        precision: "auto" (bfloat16 where the device computes it natively and the work is
            forward-only, else float32; runtime.precision.resolve_precision), "float32" or
            "bfloat16".
        batch_size: at most this many samples per forward pass.
        parallel: on a CPU, run forward batches on ``torch.get_num_threads()`` single-threaded
            workers (multistep stays in one thread: it draws from the caller's generator). Not a
            setting of the flat form: only tests and benchmarks turn it off.
    """

    precision: str = setting("auto", check=one_of("precision", PRECISION_CHOICES))
    batch_size: int = setting(256, check=bounded("batch_size"))
    parallel: bool = setting(True, json=False)

    def precision_for(self, device: torch.device | str, *, float32_only: bool = False) -> str:
        """The precision (a name of runtime.precision.PRECISIONS) the networks run in on ``device``:
        "auto" resolved (``float32_only``: explanations.settings.float32_only of the method)."""
        return resolve_precision(self.precision, device, float32_only=float32_only)

    def workers(self, device: torch.device, *, sequential: bool = False) -> int:
        """How many CPU workers run forward batches: one unless ``parallel`` on a CPU; one for
        ``sequential`` work (multistep denoising draws from the caller's generator in order)."""
        if not self.parallel or device.type != "cpu" or sequential:
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
