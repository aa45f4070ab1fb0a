"""A fork server for running documentation examples quickly (used by tests/test_docs.py).

Importing ``kmsemu.cli`` costs about a second, and the documents' shell examples run
dozens of ``kmsemu`` commands. ``serve SOCKET`` imports the CLI once and then, for each
connection, forks a child that runs one command with the caller's arguments, environment,
working directory and standard streams (passed over the Unix socket). ``call`` is the
``kmsemu`` the examples find on PATH (and as ``.venv/bin/kmsemu``): it sends its argv,
environment, directory and file descriptors 0-2, forwards SIGTERM, SIGINT and SIGHUP to the
child, and exits with the child's exit status. This module imports only a few standard
modules, so that ``call`` (run with ``python -S``) starts in a few milliseconds.

Usage: ``python tests/docrun.py serve SOCKET`` / ``python -S tests/docrun.py call ARGS...``
(``call`` reads the socket path from ``KMSEMU_DOCS_SERVER``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys

SOCKET_ENV = "KMSEMU_DOCS_SERVER"
HEADER = struct.Struct("!I")


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def call(args: list[str]) -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ[SOCKET_ENV])
    payload = json.dumps({"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [HEADER.pack(len(payload))], [0, 1, 2])
    conn.sendall(payload)
    reader = conn.makefile("r")
    pid = int(reader.readline())

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    line = reader.readline()
    return int(line) if line.strip() else 1


def _run_child(conn: socket.socket, fds: list[int], request: dict) -> None:  # type: ignore[type-arg]
    """In the forked child: become the caller's ``kmsemu`` and report the exit status."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["kmsemu", *request["argv"]]
    conn.sendall(f"{os.getpid()}\n".encode())
    code: int = 1
    try:
        from kmsemu.cli import main

        main.main(args=request["argv"], prog_name="kmsemu")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # an uncaught exception: print it as Python would
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        try:
            conn.sendall(f"{code}\n".encode())
        finally:
            os._exit(code)


def serve(path: str) -> None:
    import kmsemu.cli  # the import every child would otherwise pay for

    with contextlib.suppress(ImportError):  # matplotlib, for the simulator's report
        import kmsemu.sim.charts  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the path appears once connections are accepted
    while True:
        conn, _ = listener.accept()
        message, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 3)
        message += _read_exactly(conn, HEADER.size - len(message))
        request = json.loads(_read_exactly(conn, HEADER.unpack(message)[0]))
        if os.fork() == 0:
            listener.close()
            _run_child(conn, fds, request)
        conn.close()
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(call(sys.argv[2:]))
