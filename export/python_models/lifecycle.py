"""The python-backend stub ends when its tritonserver does.

A stub checks on its own that its server is alive, with ``kill(server_pid, 0)``; that holds
for a server that died but was not reaped (a zombie: its parent, the launcher, was killed too,
and the init of the host or container does not reap), so stubs of a killed ``samtriton serve``
could keep running, holding memory, the session cache's lock and its shared memory. When
the server dies its children are re-parented, so ``os.getppid()`` changes: a daemon thread
that sees that ends this process. No Triton import, so it is tested on its own.
"""

import os
import threading
import time

CHECK_SECONDS = 0.5
_started = []


def exit_with_server(check_seconds=CHECK_SECONDS):
    """Starts (once per process) the thread that ends this process, without cleanup, as soon as
    its parent (tritonserver) is gone; the next server sweeps what it leaves behind. Returns
    the thread."""
    if _started:
        return _started[0]
    server = os.getppid()

    def watch():
        while os.getppid() == server:
            time.sleep(check_seconds)
        os._exit(1)

    thread = threading.Thread(target=watch, name="samtriton-exit-with-server", daemon=True)
    thread.start()
    _started.append(thread)
    return thread
