"""The ``fvit`` command line: one parser, one sub-command per job, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvit",
        description="Explanation faithfulness of Vision Transformers: vanilla ViT vs Faithful ViT (DDS).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from .analyze_cli import register as register_analyze
    from .training.cli import register as register_training

    register_analyze(sub)
    register_training(sub)
    from .eval_cli import register as register_eval; register_eval(sub)  # noqa: E702  (fvit eval / certify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    # Offline by default: nothing may reach a model hub unless the user asks (--allow-download).
    if not getattr(ns, "allow_download", False):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return int(ns.handler(ns) or 0)
    except (ValueError, OSError, FloatingPointError, RuntimeError) as exc:
        print(f"fvit {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fvit {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
