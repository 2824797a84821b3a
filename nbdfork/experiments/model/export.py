"""One NBD connection to the device, owned by one I/O thread that keeps many writes in flight.

A libnbd handle must not be polled from several threads, so every command goes through a
queue to the I/O thread, which issues it with libnbd's asynchronous API and waits on the
socket and a wake-up pipe with select(). Completions call the submitter's callback on the I/O
thread: callbacks must be short and must not block.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nbd

from nbdfork.errors import DeviceError

__all__ = ["Done", "Export"]

Done = Callable[[bool], None]
"""Called on the I/O thread with True when the command succeeded."""


@dataclass(frozen=True, slots=True)
class _Command:
    """A queued command: a write of `payload` at `offset`, or a flush when payload is None."""

    payload: bytearray | None
    offset: int
    done: Done


class Export:
    """An NBD export reached through libnbd's connect_command (nbdkit -s), with an I/O thread."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._handle: Any = nbd.NBD()
        try:
            self._handle.connect_command(list(argv))
        except nbd.Error as exc:
            raise DeviceError(f"cannot start the device ({argv[0]} ...): {exc}") from None
        self._queue: deque[_Command] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._closing = False
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="nbdfork-model-io", daemon=True)
        self._thread.start()

    def write(self, payload: bytearray, offset: int, done: Done) -> None:
        """Queue an NBD WRITE of `payload` (no longer touched by the caller) at `offset`."""
        self._put(_Command(payload, offset, done))

    def flush(self, done: Done) -> None:
        """Queue an NBD FLUSH."""
        self._put(_Command(None, 0, done))

    def _put(self, command: _Command) -> None:
        with self._lock:
            if self._closing or not self._thread.is_alive():
                raise DeviceError("the export is closed or its connection was lost",
                                  errno.ESHUTDOWN)  # fmt: skip
            self._queue.append(command)
        os.write(self._wake_w, b"x")

    def _run(self) -> None:
        try:
            self._loop()
        except nbd.Error as exc:  # the connection is gone: waiters time out with the reason
            self.failures.append(f"connection lost: {exc}")

    def _loop(self) -> None:
        h = self._handle
        fd = h.aio_get_fd()
        while True:
            closing = self._issue()
            if closing and h.aio_in_flight() == 0:
                return
            writing = h.aio_get_direction() & nbd.AIO_DIRECTION_WRITE
            readable, writable, _ = select.select(
                [fd, self._wake_r], [fd] if writing else [], [], 1.0
            )
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
            if fd in readable:
                h.aio_notify_read()
            if fd in writable:
                h.aio_notify_write()

    def _issue(self) -> bool:
        """Hand every queued command to libnbd; True when closing and nothing is queued."""
        with self._lock:
            commands = list(self._queue)
            self._queue.clear()
            closing = self._closing
        for command in commands:
            self._send(command)
        return closing and not commands

    def _send(self, command: _Command) -> None:
        def completed(error: Any) -> int:
            ok = int(getattr(error, "value", error)) == 0
            if not ok:
                self.failures.append(f"{kind} at {command.offset}: errno {error}")
            command.done(ok)
            return 1  # retire the command

        kind = "flush" if command.payload is None else "write"
        try:
            if command.payload is None:
                self._handle.aio_flush(completion=completed)
            else:
                buf = nbd.Buffer.from_buffer(command.payload)
                self._handle.aio_pwrite(buf, command.offset, completion=completed)
        except nbd.Error as exc:
            self.failures.append(f"{kind} at {command.offset}: {exc}")
            command.done(False)

    def close(self, timeout: float = 60.0) -> None:
        """Wait for every command, disconnect, and wait for nbdkit to exit (its report is then
        complete)."""
        with self._lock:
            self._closing = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise DeviceError(f"writes still in flight after {timeout:g} s", errno.ETIMEDOUT)
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            self._handle.shutdown()
        except nbd.Error as exc:
            self.failures.append(f"disconnect: {exc}")
        finally:
            # libnbd 1.14's binding closes only in __del__; closing waits for the nbdkit child.
            self._handle.__del__()
            del self._handle._o
