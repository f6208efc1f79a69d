"""Start `python train.py ...` processes of the tests without paying for torch's import each time.

About 40% of the suite's CPU went to starting Python processes: torch's import, and torch._dynamo's,
which the first optimizer step pulls in (torch.optim's step wrapper imports it), take about
4 s of CPU a process on this 2-core machine, longer than most of the runs they start. A test
that needs a process (exit status, a one-line error on stderr, a launcher) still gets one:
this server, started once per pytest worker, imports what every run imports, then forks a
child per request. The child is a new process with its own pid, exit status, stdin/stdout/
stderr, working directory, environment and argv; it runs train.py as `__main__` exactly as
`python train.py` would, from a state where nothing but imports has happened.

What a fork cannot give, the client falls back to a fresh interpreter for: an environment that
differs in a variable read while the modules were imported (PYTHON*, TORCH*, OMP_*, ...).
MINIGPT_TESTS_NO_FORKSERVER=1 starts every process fresh (to rule the server out).

    server: python tests/forkserver.py SOCKET      (started by `run`, ended with the worker)
    client: run(argv, cwd, env, timeout) -> subprocess.CompletedProcess, or None to fall back
            argv: a script of this checkout and its arguments, or ["-m", "minigpt...", ...]
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Read when torch, OpenMP or Python itself start: a child cannot change them after the fork.
IMPORT_TIME_ENV = ("PYTHON", "TORCH", "OMP_", "MKL_", "KMP_", "CUDA", "NCCL", "LD_", "MPL", "HYDRA_FULL_ERROR")
RUN_TIME_ENV = ("PYTHONPATH", "PYTHONUNBUFFERED")  # applied in the child (sys.path; stdio is unbuffered)


# --- the server -----------------------------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[1]


def serve(path: str) -> None:
    base_path = [p for p in sys.path[1:] if p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    sys.path.insert(0, str(ROOT))  # as `python train.py` finds the package: the checkout first
    # In the order a run imports them, so that exit handlers are registered in the same order.
    import minigpt.launch.train  # noqa: F401  (Hydra, OmegaConf, torch, the whole package)
    import torch._dynamo  # noqa: F401  (the first optimizer step imports it)

    if len(os.listdir("/proc/self/task")) > 1:  # a fork copies one thread: refuse (the client falls back)
        sys.exit(f"forkserver: {len(os.listdir('/proc/self/task'))} threads after the imports; not forking")
    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    children: dict[int, socket.socket] = {}  # running children and the connection waiting for each
    while os.getppid() == parent:  # until the pytest worker is gone
        if select.select([server], [], [], 0.02)[0]:
            conn, _ = server.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            pid = os.fork()
            if pid == 0:
                for other in (server, conn, *children.values()):
                    other.close()
                _child(json.loads(message), fds, base_path)  # never returns
            for fd in fds:
                os.close(fd)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            children[pid] = conn
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            try:
                conn.sendall(json.dumps({"returncode": code}).encode() + b"\n")
            except OSError:
                pass
            conn.close()


def _child(request: dict, fds: list[int], base_path: list[str]) -> None:
    import random
    import runpy
    import threading
    import traceback

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        module = argv[1] if argv[0] == "-m" else None
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        # sys.path[0]: the script's folder, or for `-m` the working directory, as Python sets it
        first = os.getcwd() if module else str(Path(argv[0]).resolve().parent)
        sys.path[:] = [first, *extra, *base_path]
        sys.argv = argv[1:] if module else list(argv)  # runpy puts the module's file in argv[0]
        random.seed()  # a fresh interpreter seeds from the OS, not from its parent
        try:
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            _flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)  # as Python ends on an uncaught Ctrl-C
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # wait for non-daemon threads, as interpreter exit does
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(code & 0xFF)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# --- the client -----------------------------------------------------------------------------------

_server: dict = {}


def usable(env: dict) -> bool:
    """Whether a child forked from the server can run with `env`: no variable read at import time
    differs from the environment the server imported under (or will, started now)."""
    if os.environ.get("MINIGPT_TESTS_NO_FORKSERVER"):
        return False
    imported_under = _server.get("env") or _server_env()
    for key in set(env) | set(imported_under):
        if env.get(key) != imported_under.get(key) and key.startswith(IMPORT_TIME_ENV) and key not in RUN_TIME_ENV:
            return False
    return True


def _server_env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def _start() -> str | None:
    if _server.get("failed"):
        return None
    if _server.get("proc") is not None and _server["proc"].poll() is None:
        return _server["path"]
    folder = tempfile.mkdtemp(prefix="minigpt-forkserver-")
    path = os.path.join(folder, "socket")
    env = _server_env()
    proc = subprocess.Popen([sys.executable, __file__, path], env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _server["failed"] = True  # e.g. OpenMP started threads (OMP_NUM_THREADS unset): fresh processes
            return None
        time.sleep(0.05)
    _server.update(pid=proc.pid, path=path, proc=proc, env=env)
    atexit.register(_stop, proc)
    return path


class Forked:
    """A child of the server, as much of subprocess.Popen as the tests use: pid, poll, wait,
    send_signal, kill, returncode."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]):
        self.conn, self.pid, self.args, self.returncode = conn, pid, args, None

    def poll(self) -> int | None:
        return self.wait(timeout=0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (negative: killed by that signal); wait(0) returns None while it runs,
        another timeout raises subprocess.TimeoutExpired, as Popen.wait does."""
        if self.returncode is not None:
            return self.returncode
        self.conn.settimeout(timeout)
        try:
            line = _line(self.conn)
        except (socket.timeout, TimeoutError, BlockingIOError):
            if timeout == 0:
                return None
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        self.conn.close()
        self.returncode = json.loads(line)["returncode"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()  # reaped, so that its CPU time (and its children's) counts in the worker's


def start(argv: list, cwd, env: dict, stdout, stderr) -> Forked | None:
    """`python *argv` started in cwd with env, its output to the open files stdout and stderr
    (stderr may be subprocess.STDOUT), stdin empty; None when the server cannot run it."""
    argv = [str(a) for a in argv]
    ours = (argv[0] == "-m" and len(argv) > 1 and argv[1].split(".")[0] == "minigpt") or \
        (argv[0] != "-m" and Path(argv[0]).resolve().is_relative_to(ROOT) and argv[0].endswith(".py"))
    if not ours or not usable(env):
        return None
    path = _start()
    if path is None:
        return None
    err = stdout if stderr == subprocess.STDOUT else stderr
    request = {"argv": argv, "cwd": str(cwd), "env": env}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with open(os.devnull, "rb") as null:
            conn.connect(path)
            socket.send_fds(conn, [json.dumps(request).encode()], [null.fileno(), stdout.fileno(), err.fileno()])
        pid = json.loads(_line(conn))["pid"]
    except (OSError, ValueError, KeyError):
        conn.close()
        return None
    return Forked(conn, pid, [sys.executable, *argv])


def run(argv: list, cwd, env: dict, timeout: float) -> subprocess.CompletedProcess | None:
    """`python *argv` in cwd with env, as subprocess.run(..., capture_output=True, text=True) gives
    it; None when the server cannot run it (the caller starts a fresh interpreter)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = start(argv, cwd, env, out, err)
        if child is None:
            return None
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()  # as subprocess.run does
            child.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout, stderr = (_text(f.read()) for f in (out, err))
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def _line(conn: socket.socket) -> bytes:
    """One reply of the server's (each is a line, and the next comes only after this is read)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("the fork server closed the connection")
        data += chunk
    return data


def _text(data: bytes) -> str:
    # as subprocess.run(text=True) reads it: universal newlines (a progress bar's \r included)
    return data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    serve(sys.argv[1])
