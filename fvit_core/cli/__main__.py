"""``python -m fvit_core.cli``: the same as the ``fvit`` command (torchrun starts it this way)."""

import sys

from fvit_core.cli.main import main

sys.exit(main())
