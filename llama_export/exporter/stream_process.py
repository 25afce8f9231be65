"""stream_weights in a child process, with WeightStreamer's interface (start / result / cancel).

Why a process for big models: the tracer and the graph passes are pure Python and hold the GIL for seconds,
while the stream needs it for a moment between every numpy / torch / hashlib call. In one process each slows
the other so much that together they were no faster than one after the other (docs/BENCHMARKS.md, "Export
memory and time"). A child costs seconds of CPU to import torch, so small models stream in a thread
(weights.start_streamer picks).

How: `python -m llama_export.exporter.stream_process FD` (a plain subprocess, not multiprocessing's spawn,
which re-runs the caller's main script in the child: a script without an `if __name__ == "__main__"` guard
would export again). The parent writes the pickled job (sys.path, then checkpoint, dtype, path, transform) to
the child's stdin and keeps stdin open; closing it (cancel, or the parent dying) tells the child to stop. The
child reports on its own pipe FD, one pickled message each: ("tensor", name) after each tensor,
("done", layout, sha256) or ("error", exception). It runs in its own session, so a Ctrl-C in the terminal
reaches only the parent, which stops it as it stops the thread.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from .artifacts import remember_sha256
from .checkpoints import Checkpoint
from .weights import Placement, Transform, stream_weights


class ProcessWeightStreamer:
    def __init__(self, checkpoint: Checkpoint, dtype: torch.dtype, path: Path,
                 progress: Callable[[str], None] | None = None, transform: Transform | None = None):
        self._path, self._progress = Path(path), progress
        self._job = (checkpoint, dtype, self._path, transform)
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._done: tuple[dict[str, Placement], str] | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        job = pickle.dumps(self._job)  # before the child exists: an unpicklable job fails here, in the parent
        read_end, write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(write_end)], stdin=subprocess.PIPE, pass_fds=(write_end,),
                start_new_session=True)
        finally:
            os.close(write_end)  # the child holds the only writing end: its exit ends the reader
        messages = os.fdopen(read_end, "rb")
        self._reader = threading.Thread(target=self._read, args=(messages,), name="weights-stream-messages",
                                        daemon=True)
        self._reader.start()
        try:
            pickle.dump(list(sys.path), self._process.stdin)
            self._process.stdin.write(job)
            self._process.stdin.flush()
        except BrokenPipeError:
            pass  # the child died at once; result() reports it

    def _read(self, messages) -> None:
        """Drain the child's messages as they come (so its pipe never fills), reporting progress."""
        with messages:
            while True:
                try:
                    kind, *payload = pickle.load(messages)
                except EOFError:
                    return
                if kind == "tensor" and self._progress is not None:
                    self._progress(payload[0])
                elif kind == "done":
                    self._done = payload[0], payload[1]
                elif kind == "error":
                    self._error = payload[0]

    def result(self) -> dict[str, Placement]:
        assert self._process is not None and self._reader is not None, "start() first"
        self._reader.join()
        code = self._process.wait()
        self._close_stdin()
        if self._error is not None:
            raise self._error
        if self._done is None:
            raise RuntimeError(f"the weight-stream process died (exit code {code}) before it finished; if the "
                               "system ran out of memory, close other programs and retry")
        layout, sha256 = self._done
        remember_sha256(self._path, sha256)
        return layout

    def cancel(self) -> None:
        if self._process is None:
            return
        self._close_stdin()  # the child's watcher sets its stop event: it ends after the tensor in hand
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join()

    def _close_stdin(self) -> None:
        try:
            self._process.stdin.close()
        except OSError:
            pass


class _ParentGone(Exception):
    """The message pipe is closed: the parent exited (killed, or done with us)."""


def _child(fd: int) -> None:
    messages = os.fdopen(fd, "wb")

    def send(message: tuple) -> None:
        try:
            pickle.dump(message, messages)
            messages.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise _ParentGone from None

    try:
        try:
            sys.path[:] = pickle.load(sys.stdin.buffer)  # the parent's, so its checkpoint classes unpickle
            checkpoint, dtype, path, transform = pickle.load(sys.stdin.buffer)
            stop = threading.Event()

            def watch_parent() -> None:
                while os.read(0, 1 << 16):  # returns b"" at EOF: the parent cancelled or exited. (A raw read:
                    pass                    # a daemon thread blocked in sys.stdin's buffer aborts shutdown.)
                stop.set()

            threading.Thread(target=watch_parent, daemon=True).start()
            send(("done", *stream_weights(checkpoint, dtype, path, stop, lambda name: send(("tensor", name)),
                                          transform)))
        except _ParentGone:
            raise
        except BaseException as exc:  # noqa: BLE001 -- handed to the parent
            try:
                send(("error", exc))
            except _ParentGone:
                raise
            except Exception:  # noqa: BLE001 -- an exception that does not pickle still reaches the user
                send(("error", RuntimeError(f"weight stream: {type(exc).__name__}: {exc}")))
    except _ParentGone:
        pass  # nobody is left to tell: exit quietly (a killed parent's next run removes its staging folder)
    except EOFError:
        pass  # the parent died before sending the whole job
    sys.stderr.flush()
    # The data file is closed and fsynced and the parent has the answer: skip the interpreter's teardown of
    # torch (CPU time the parent would wait for). os._exit also skips flushing `messages` into a closed pipe.
    os._exit(0)


if __name__ == "__main__":
    _child(int(sys.argv[1]))
