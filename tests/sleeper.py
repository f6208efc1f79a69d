"""A process for tests/test_forkserver.py: says it started, then sleeps (or kills itself)."""

import os
import signal
import sys
import time

print("sleeping", flush=True)
if "--kill-self" in sys.argv:
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(float(sys.argv[1]))
