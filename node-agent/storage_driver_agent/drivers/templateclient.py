"""The supervisor's side of the host template (template.py): start it, ask it for hosts.

The supervisor keeps one template as its child and asks it over a socket pair for each host.
A template that died is started again on the next request; the caller falls back to starting a
fresh interpreter when the template cannot serve (see Supervisor.start_host).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Final

from storage_driver_agent.drivers.launcher import host_env
from storage_driver_agent.drivers.template import TEMPLATE_MODULE, TITLE_ROOM

ANSWER_TIMEOUT: Final = 30.0  # the first answer waits for the template's imports


class TemplateGone(Exception):
    """The template died or stopped answering; a host may or may not have been forked."""


class TemplateRefused(Exception):
    """The template is alive but could not fork this host (the reason is the message)."""


class HostTemplate:
    def __init__(self, python: str = sys.executable, timeout: float = ANSWER_TIMEOUT):
        self.python = python
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self._buffer = b""
        # How the template creates hosts ("clone3" or "fork") and, if not clone3, why, as it
        # said with its last host.
        self.method: tuple[str, str] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> int:
        """Start the template (if not running); returns its pid."""
        if self.process is not None and self.control is not None:
            return self.process.pid
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    TEMPLATE_MODULE,
                    "--fd",
                    str(theirs.fileno()),
                    # The argument area each host rewrites into its own command line.
                    "--title-room",
                    "x" * TITLE_ROOM,
                ],
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # the supervisor's signals are not the template's
                env=host_env(),
                close_fds=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        # The supervisor reaps every child with waitpid(-1); Popen must not try to.
        self.process.returncode = 0
        ours.settimeout(self.timeout)
        self.control, self._buffer = ours, b""
        return self.process.pid

    def spawn(self, argv: list[str], log_path: Path) -> int:
        """A host forked by the template from `argv` (checked by the caller); returns its pid."""
        self.start()
        assert self.control is not None
        try:
            self.control.sendall(json.dumps({"argv": argv, "log": str(log_path)}).encode() + b"\n")
            line = self._readline()
        except (OSError, TimeoutError) as exc:
            self.close()
            raise TemplateGone(f"the host template did not answer: {exc}") from exc
        if not line:
            self.close()
            raise TemplateGone("the host template exited")
        reply = json.loads(line)
        if "pid" not in reply:
            raise TemplateRefused(str(reply.get("error", "no pid in the answer")))
        self.method = (str(reply.get("method", "")), str(reply.get("why", "")))
        return int(reply["pid"])

    def _readline(self) -> bytes:
        assert self.control is not None
        while b"\n" not in self._buffer:
            data = self.control.recv(65536)
            if not data:
                return b""
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def exited(self, pid: int) -> bool:
        """Told that child `pid` was reaped: True (and forget it) if it was the template."""
        if self.process is None or self.process.pid != pid:
            return False
        self.close()
        return True

    def close(self) -> None:
        """Stop using the template; it exits when its socket closes (the supervisor reaps it)."""
        if self.control is not None:
            with contextlib.suppress(OSError):
                self.control.close()
        self.control, self.process, self._buffer = None, None, b""
