"""The engine's typed errors: what a user can fix, as opposed to a bug.

Every error a user can act on (a bad image, a bad setting, a model that cannot be loaded) is a
:class:`FViTError`, whose message is one actionable line. The fronts show those messages as they
are (the CLI exits with status 2, the dashboard shows a message); any other exception is a bug
(the CLI exits with status 1 and asks for a report, the dashboard says "internal error").

The user-facing classes also subclass :class:`ValueError`, so callers that caught ValueError
keep working. This module imports nothing heavy (no torch): the dashboard imports it.
"""

from __future__ import annotations

import sys

# An error line never grows with the input: a value echoed from a 100 MB settings file is cut.
MAX_ERROR_CHARS = 500


class FViTError(Exception):
    """Base of the errors a user can fix; the message says what to do."""


class InputError(FViTError, ValueError):
    """Bad input: an image, a pixel array, a data folder or a file that cannot be used."""


class SettingError(FViTError, ValueError):
    """A bad setting: an option, a config value or a combination of them."""


class ModelLoadError(FViTError, ValueError):
    """A model could not be loaded (missing, corrupted, wrong architecture); the message says what to fix."""


# What a model that returns NaN or infinity most likely has, and what to do about it.
NON_FINITE_HINT = "its weights are probably corrupted (NaN or infinite); re-export or re-download the checkpoint"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for running out of memory (host MemoryError, or torch's CUDA/MPS out-of-memory error,
    a RuntimeError subclass): the user can fix it with a smaller batch, so it is not a bug.

    torch is never imported here; if it is not loaded, no torch error can have been raised."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


def is_user_error(exc: BaseException) -> bool:
    """True for an error the user can fix (FViTError, an OSError about a file, out of memory);
    False for a bug."""
    return isinstance(exc, (FViTError, OSError)) or is_out_of_memory(exc)


def one_line(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """The message of ``exc`` on one line (library messages often span several), never empty, at
    most ``limit`` characters."""
    text = " ".join(str(exc)[: 4 * limit].split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
