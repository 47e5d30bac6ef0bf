"""Run a command on a pseudo-terminal, as a user at a shell would: stdout and stderr on one terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios


def run_on_a_terminal(cmd: list[str], columns: int = 120, timeout: float = 300) -> tuple[int, str]:
    """(exit code, everything the terminal received). The terminal has a width, since tqdm draws no bar at 0."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = proc.wait(timeout=timeout)
    os.close(primary)
    return code, b"".join(chunks).decode()
