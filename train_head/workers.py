"""Pool workers that do not outlive the command that started them.

`python -m train_head train --jobs N` runs configs in joblib's loky processes. When the command is killed
(SIGTERM, SIGKILL, a closed terminal), its workers would go on training and hold the run folders' locks,
so an immediate rerun would find them busy. `exit_with_parent()`, called at the start of every pool task,
starts (once per worker process) a daemon thread that ends the worker as soon as its parent process is
gone: on Linux the worker is then re-parented, so `os.getppid()` changes. The run's last checkpoint stays;
a rerun resumes from it.
"""
from __future__ import annotations

import os
import threading
import time

_watching = False


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Exit this process (status 1) within `poll_s` seconds after its parent dies. Idempotent. Only for
    pool workers: the main process of a command is not watched (its parent is the user's shell)."""
    global _watching
    if _watching:
        return
    _watching = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
