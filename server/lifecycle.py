"""The python-backend stubs end when their tritonserver does.

A stub notices on its own when its server is gone and exits, but not always: one killed
while answering a request can hang for good, holding the GIL while it waits for its dead
server's reply (seen here after a SIGKILL of ``samtriton serve``: a session stub kept
running, its process group's tritonserver gone), and then no Python code can end it.

So the end comes from the kernel: ``EmbeddedTriton`` hands tritonserver both ends of a pipe
(``LIFELINE_ENV`` names them) and keeps neither; each stub closes its inherited write end
and asks for SIGKILL to its process group (tritonserver's, which only the stubs outlive)
when the pipe's last writer is gone, i.e. when tritonserver has exited, however it died.
No Triton import, so it is tested on its own.
"""

import fcntl
import os
import signal
import stat

LIFELINE_ENV = "SAMTRITON_SERVER_LIFELINE"  # "read_fd,write_fd" of the server's pipe
_held = []


def exit_with_server():
    """Holds the server's lifeline (once per process): this stub is SIGKILLed as soon as its
    tritonserver has exited; the next server sweeps what it leaves behind. Returns whether a
    lifeline was given (a server started otherwise gives none)."""
    if not _held:
        _held.append(hold_lifeline(os.environ.get(LIFELINE_ENV, "")))
    return _held[0]


def hold_lifeline(value):
    """``value`` is "read_fd,write_fd" of one pipe whose write end the server holds: closes
    this process's write end and has the kernel SIGKILL this process group when the last
    write end closes. Returns False (and touches nothing) unless both are that pipe."""
    try:
        read_fd, write_fd = (int(part) for part in value.split(","))
        read_info, write_info = os.fstat(read_fd), os.fstat(write_fd)
    except (ValueError, OSError):
        return False
    if not (
        stat.S_ISFIFO(read_info.st_mode)
        and (read_info.st_dev, read_info.st_ino) == (write_info.st_dev, write_info.st_ino)
    ):
        return False
    os.close(write_fd)
    # The read end is shared by every stub (one open file, inherited): its owner is the
    # process group they share, so whichever stub set it last, all of them get the signal.
    fcntl.fcntl(read_fd, fcntl.F_SETOWN, -os.getpgrp())
    fcntl.fcntl(read_fd, fcntl.F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(read_fd, fcntl.F_SETFL, fcntl.fcntl(read_fd, fcntl.F_GETFL) | os.O_ASYNC)
    return True
