"""``python -m fvit_core.cli``: the same as the ``fvit`` command (torchrun starts it this way)."""

from fvit_core.cli.main import run

run()
