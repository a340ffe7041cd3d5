"""The ``fvit`` command line (entry point :func:`fvit_core.cli.main.main`): a thin front over the
engine, one module per group of commands."""
