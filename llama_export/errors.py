"""Errors the user can cause. The CLI prints them as one line on stderr and exits with code 2."""

from __future__ import annotations

import contextlib
import errno
import signal
import threading


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do, on one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # one line, always


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, Kubernetes): a KeyboardInterrupt, so every cleanup that runs on Ctrl-C
    (staging folders removed, the weight-stream child stopped) runs on it too."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """While the block runs, SIGTERM raises Terminated in the main thread (elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(_signum, _frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# What to do about the common faults, after the system's own words.
_ADVICE = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "that filesystem is read-only: write elsewhere",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
    errno.EBUSY: "a mount point or a file in use: write elsewhere",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EIO: "the device reported an I/O error",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path(s), the system's message, and what to do."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    what = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno)
    return f"{paths + ': ' if paths else ''}{what}{'; ' + advice if advice else ''}"
