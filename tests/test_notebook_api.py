"""The notebook API: ``import fvit_core`` exports the names the README promises, lazily, and the
README's example runs as printed."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import fvit_core

ROOT = Path(__file__).resolve().parent.parent


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- notebook-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its notebook example"
    return match.group(1)


def test_the_readme_example_runs_and_gives_sane_numbers(monkeypatch):
    monkeypatch.chdir(ROOT)
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 14  # about ten lines, as promised
    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), scope)
    result, estimate, radius = scope["result"], scope["estimate"], scope["radius"]
    assert 0.0 <= result.vanilla.topk_overlap <= 1.0 and 0.0 <= result.fvit.topk_overlap <= 1.0
    assert 0.0 <= result.faithful.topk_overlap_floor <= 1.0
    assert estimate.n_samples == 128 and int(estimate.votes.sum()) == 128
    assert np.isclose(estimate.attention.sum(), 1.0) and radius >= 0.0
    printed = out.getvalue().splitlines()
    assert len(printed) == 2 and printed[1].split()[0] in (*scope["pair"].classifier.class_names, "abstain")


def test_every_exported_name_resolves_and_import_stays_free_of_torch():
    for name in fvit_core.__all__:
        assert getattr(fvit_core, name) is not None
    assert set(fvit_core.__all__) <= set(dir(fvit_core))
    code = "import sys, fvit_core; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip() == "False"
    try:
        fvit_core.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("unknown names must raise AttributeError")
