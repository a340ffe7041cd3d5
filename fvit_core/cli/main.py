"""The ``fvit`` command line: one parser, one sub-command per job, one-line errors."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import warnings

from fvit_core.errors import is_out_of_memory, is_user_error, one_line


# The training commands take their flags from dataclasses in modules that import torch; their
# parsers are built only when one of them is the command, so `fvit --help` and option errors of
# the other commands stay fast (no torch import).
TRAINING_COMMANDS: dict[str, str] = {
    "train-classifier": "train or fine-tune the ViT classifier (resumable)",
    "train-denoiser": "train the DDPM denoiser (resumable)",
    "evaluate-models": "measure a pair's model-card numbers on a labelled image folder",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors: a wrong option says what is wrong and where the help is,
    without the usage block (which grows with every flag)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} ({self.prog} --help lists the options)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``fvit`` parser. ``argv`` (the arguments to parse) decides whether the training
    commands get their full parsers (one of them is the command) or a one-line entry."""
    parser = OneLineParser(
        prog="fvit",
        description="Explanation faithfulness of Vision Transformers: vanilla ViT vs Faithful ViT (DDS).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from fvit_core.cli.analyze import register as register_analyze
    from fvit_core.cli.evaluate import register as register_eval

    register_analyze(sub)
    args = sys.argv[1:] if argv is None else argv
    if any(a in TRAINING_COMMANDS for a in args):
        from fvit_core.cli.training import register as register_training

        register_training(sub)
    else:
        for name, help_text in TRAINING_COMMANDS.items():
            sub.add_parser(name, help=help_text, description=help_text)
    register_eval(sub)  # fvit eval / certify
    from fvit_core.cli.models import register as register_models

    register_models(sub)  # fvit convert-adm / save-classifier
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``fvit`` command; returns the exit status.

    Errors are one line on standard error: 2 for a problem the user can fix (a
    :class:`~fvit_core.errors.FViTError`: bad input, bad setting, unloadable model; an OSError
    about a file; out of memory), 1 for any other exception, an internal error (a bug:
    FVIT_DEBUG=1 shows its traceback), 130 for Ctrl-C. Tracebacks are never shown otherwise.
    """
    parser = build_parser(argv)
    ns = parser.parse_args(argv)
    # Offline by default: nothing may reach a model hub unless the user asks (--allow-download).
    # huggingface_hub reads this once, at import, which has not happened yet here.
    if not getattr(ns, "allow_download", False):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    else:
        from fvit_core.models.common import HUB_UNREACHABLE_ENV, hub_host, hub_reachable  # torch: models load next

        if not hub_reachable():
            # Without a network huggingface_hub retries for about 50 s and prints a line per try
            # (issue 26); offline it answers from its cache at once, and says so when a model is not there.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ[HUB_UNREACHABLE_ENV] = hub_host()  # named in the error if a model is not in the cache
    # diffusers' loading warnings would add lines to our one-line errors (we raise on what they warn about).
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        with warnings.catch_warnings():
            if not sys.warnoptions and os.environ.get("FVIT_DEBUG") != "1":
                _quiet_library_warnings()
            return int(ns.handler(ns) or 0)
    except KeyboardInterrupt:
        print(f"fvit {ns.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if is_user_error(exc):  # a typed engine error, a user file, out of memory: the user can fix it
            hint = "out of memory (try a smaller --batch-size or fewer samples): " if is_out_of_memory(exc) else ""
            print(f"fvit {ns.command}: error: {hint}{one_line(exc)}", file=sys.stderr)
            return 2
        if os.environ.get("FVIT_DEBUG") == "1":  # a bug: still one line for the user, the traceback on request
            raise
        print(f"fvit {ns.command}: internal error (please report it; FVIT_DEBUG=1 shows the traceback): "
              f"{type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1


def run() -> None:
    """The ``fvit`` console script (and ``python -m fvit_core.cli``): :func:`main`, then a quick exit.

    With torch, timm and diffusers loaded (about 3,600 modules), the interpreter's own teardown
    takes 1.2-1.4 s on 2 cores, a quarter of a default ``fvit analyze`` (issue 24,
    docs/PERFORMANCE.md). Nothing of ours relies on it: results are written and closed before
    :func:`main` returns, and the atexit handlers (logging, temporary folders, torch's) still run
    here. FVIT_FULL_EXIT=1 keeps the normal teardown.
    """
    code = main()
    if os.environ.get("FVIT_FULL_EXIT") == "1" or "torch" not in sys.modules:
        sys.exit(code)  # nothing heavy loaded (help, option errors): the normal exit is quick
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (fvit ... | head): nothing more to say
            pass
    os._exit(code)


def _quiet_library_warnings() -> None:
    """Deprecation notes of the libraries underneath are for developers, not for CLI users (whose
    errors are one line); ``python -W`` or FVIT_DEBUG=1 shows them again."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning,
                            module=r"(huggingface_hub|diffusers|timm|torchattacks|torch|PIL)(\.|$)")
