"""A child process we own: started with its output in a log file, stopped
politely and then firmly, killed on demand (fault tests), and never left behind
— on Linux the kernel kills it if its parent dies (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


class ServiceStartError(RuntimeError):
    """A local server did not come up; the message carries the end of its log."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to arrange
        pass


@dataclass
class ManagedProcess:
    """One long-running child. `stop_signal` is what asks it to shut down
    cleanly (Postgres wants SIGINT for a fast shutdown, most others SIGTERM)."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    run_as: str | None = None  # a system user, e.g. for Postgres when we are root
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # owned until stop()
        user = pwd.getpwnam(self.run_as) if self.run_as else None
        self._proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            # Own process group: stop() and kill() reach its children too.
            start_new_session=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def stop(self, timeout: float = 8.0) -> int | None:
        """Ask politely, wait up to `timeout`, then kill the whole group."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait()
        self._reap_group()
        return self._finish()

    def kill(self) -> None:
        """kill -9, as a crash would: no chance to clean up."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._proc.wait()
        self._finish()

    def send_signal(self, sig: int) -> None:
        """Signal the child's whole process group (no-op once it has exited)."""
        if self.running:
            self._signal_group(sig)

    def _signal_group(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap_group(self) -> None:
        """Children of a child that ignored the stop (none should) are killed."""
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, 0)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                os.killpg(self._proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)

    def _finish(self) -> int | None:
        code = self._proc.returncode if self._proc else None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def tail(self, lines: int = 20) -> str:
        """The end of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
