"""Processes under test and load processes: start, ready line, /proc figures, stop."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchkit.waits import Cpus, pin_self, pinned

# utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat: 11-14 after "comm)".
_STAT_UTIME = 11
_STAT_PPID = 1


# -- /proc -------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_cpu(pid: int, reaped: bool = False) -> float:
    """utime+stime of a process (all its threads), plus its reaped children's if asked."""
    fields = stat_fields(pid)
    ticks = int(fields[_STAT_UTIME]) + int(fields[_STAT_UTIME + 1])
    if reaped:
        ticks += int(fields[_STAT_UTIME + 2]) + int(fields[_STAT_UTIME + 3])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds."""
    fields = stat_fields(pid)
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[_STAT_UTIME]) / hz, int(fields[_STAT_UTIME + 1]) / hz


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, live or reaped (a PostgreSQL cluster)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(stat_fields(int(entry))[_STAT_PPID])
            except (OSError, IndexError, ValueError):
                continue
    total = process_cpu(root, reaped=True)
    members: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - members
        members |= frontier
    for pid in members:
        try:
            total += process_cpu(pid)
        except (OSError, IndexError, ValueError):
            continue
    return total


def status_kib(pid: int, fields: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """Fields of /proc/PID/status (VmRSS and VmHWM in KiB by default)."""
    wanted = tuple(f"{name}:" for name in fields)
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(wanted):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_cpu() -> float:
    """CPU seconds of this process's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu(before: os.times_result, after: os.times_result) -> float:
    return (after.user - before.user) + (after.system - before.system)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a server under test -------------------------------------------------------------------


def _popen(argv: list[str], stderr: Any, env: dict[str, str] | None, **more: Any) -> Any:
    """``argv`` with no stdin or stdout, its stderr to ``stderr``."""
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env, **more
    )


class ServerProcess:
    """A server started with its stderr in a file; waits (bounded) for its ready line.

    ``ready`` is a regular expression searched in the log (MULTILINE; ``self.match`` is its
    match), or a check called with the process until it is true (a query answered).
    ``name`` and ``tail`` shape the error when the server does not start.
    """

    def __init__(
        self,
        argv: list[str],
        workdir: Path,
        ready: str | Callable[[ServerProcess], bool],
        *,
        name: str,
        log_name: str = "server.log",
        cpus: Cpus = None,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        poll: float = 0.02,
        tail: int | None = None,
    ) -> None:
        self.argv = argv
        self.log_path = workdir / log_name
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = _popen(argv, self._log, env, cwd=workdir, preexec_fn=pinned(cpus))
        self.pid = self.proc.pid
        self.returncode: int | None = None
        self.stop_seconds: float | None = None
        deadline = time.monotonic() + timeout
        pattern = re.compile(ready, re.MULTILINE) if isinstance(ready, str) else None
        while True:
            text = self.log_text()
            match = pattern.search(text) if pattern is not None else None
            if match or (pattern is None and callable(ready) and ready(self)):
                self.match = match
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{text[-tail:] if tail else text}")
            time.sleep(poll)
        self.ready_seconds = round(time.monotonic() - self.started, 2)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        return process_cpu(self.pid)

    def memory_kib(self) -> dict[str, int]:
        return status_kib(self.pid)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code (None: it was killed)."""
        if self.proc.poll() is None:
            start = time.monotonic()
            self.proc.terminate()
            try:
                self.returncode = self.proc.wait(timeout)
                self.stop_seconds = round(time.monotonic() - start, 2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.returncode = None
        else:
            self.returncode = self.proc.returncode
        self._log.close()
        return self.returncode


def start_ready(
    argv: list[str], prefix: str, env: dict[str, str] | None = None, limit: float = 60.0
) -> tuple[subprocess.Popen[str], str, float]:
    """Start ``argv`` with its stderr in a pipe, read it until a line starting with ``prefix``.

    (process, ready line, seconds from just before the start). Read line by line, unlike
    ``ServerProcess``, so that the time is exact; the rest of stderr is drained by a thread.
    The process is killed after ``limit`` s without a ready line.
    """
    started = time.perf_counter()
    proc: subprocess.Popen[str] = _popen(argv, subprocess.PIPE, env, text=True)
    assert proc.stderr is not None
    killer = threading.Timer(limit, proc.kill)
    killer.start()
    try:
        for line in proc.stderr:
            if line.startswith(prefix):
                ready = time.perf_counter() - started
                break
        else:
            raise RuntimeError(f"{argv[0]} exited ({proc.wait()}) before it was ready")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        killer.cancel()
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, line, ready


def http_call(
    address: tuple[str, int],
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 30,
) -> tuple[int, bytes]:
    """One HTTP request (a JSON body, a bearer token); (status, body)."""
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        connection.request(method, path, None if body is None else json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def exit_on_sigterm() -> None:
    """Make SIGTERM a SystemExit, so that the finally blocks run: nothing is left behind."""

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


# -- forked load processes ------------------------------------------------------------------


class Worker:
    """A forked process running ``target(pipe, *args)``; what it sends comes back by ``recv``."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.name = name
        ctx = mp.get_context("fork")
        self.pipe, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child_end, *args), daemon=True)
        self.proc.start()
        child_end.close()

    def recv(self, timeout: float, what: str) -> Any:
        """The next message; RuntimeError when none comes within ``timeout`` s or the
        worker failed (``{"fatal": ...}``)."""
        if not self.pipe.poll(timeout):
            raise RuntimeError(f"{self.name} did not {what}")
        message = self.pipe.recv()
        if isinstance(message, dict) and "fatal" in message:
            raise RuntimeError(f"{self.name}: {message['fatal']}")
        return message

    def send(self, message: Any) -> None:
        self.pipe.send(message)

    def stop(self) -> None:
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def worker_body(
    pipe: Any, cpus: Cpus, body: Callable[[], Any], *, full_traceback: bool = False
) -> None:
    """In a worker: pin, run ``body`` and send what it returns; a failure is sent as
    ``{"fatal": ...}`` (never hang the parent)."""
    try:
        pin_self(cpus)
        pipe.send(body())
    except BaseException as exc:
        fatal = f"{exc!r}\n{traceback.format_exc()}" if full_traceback else repr(exc)
        pipe.send({"fatal": fatal})
    finally:
        pipe.close()


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[Any, str]:
    """Run ``main()`` on uvloop when it is installed, else on asyncio; (result, loop name)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main()), "asyncio"
    return uvloop.run(main()), "uvloop"


def raise_nofile() -> None:
    """Raise the soft limit on open files to the hard one (many idle connections)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
