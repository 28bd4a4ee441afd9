"""Shared behaviour of the ``omnifm-*`` console commands.

``pipe_safe(main)``: a command whose output goes into ``| head`` (or any reader that stops early)
ends quietly instead of printing a ``BrokenPipeError`` traceback, following the recipe of the
Python docs (``signal`` module, "Note on SIGPIPE"): point stdout at devnull so the interpreter's
final flush cannot fail again, and exit with 141 (128 + SIGPIPE), as a shell tool killed by the
signal would.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["EXIT_BROKEN_PIPE", "pipe_safe"]

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: the exit status of a command whose reader closed the pipe."""

F = TypeVar("F", bound=Callable[..., int])


def pipe_safe(main: F) -> F:
    """Decorate a command's ``main``: a closed stdout pipe ends it with :data:`EXIT_BROKEN_PIPE`, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # a pipe closed after the last print fails here, inside the guard
            return code
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_BROKEN_PIPE

    return wrapper  # type: ignore[return-value]


def _silence_stdout() -> None:
    """Redirect stdout to devnull, so the interpreter's flush at exit raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by an object without a file descriptor (tests)
        pass
