"""A fork server that runs documentation examples' ``kmsemu`` commands quickly.

tests/test_docs.py runs the documents' shell examples: about a hundred ``kmsemu`` commands.
Each would spend most of its time importing. ``serve(SOCKET)`` imports kmsemu and mak once,
then for every connection forks a child that runs one command with the caller's arguments,
environment, working directory and standard streams (file descriptors 0-2, passed over the
Unix socket), and answers with the child's pid and then its exit status.

``call`` is the client: the examples' ``kmsemu`` (and ``.venv/bin/kmsemu``) is a script made
of its source (``shim``), run with ``python -S``, so that it starts in a few milliseconds. It
forwards SIGTERM, SIGINT and SIGHUP to the child (servers started with ``&`` are stopped
that way) and exits with the child's status. The request is a marshalled
``{"argv", "cwd", "env"}``, after a 4-byte big-endian length sent with the descriptors.
"""

from __future__ import annotations

import contextlib
import inspect
import marshal
import os
import socket
import sys

SOCKET_ENV = "KMSEMU_DOCS_SERVER"


def call(args: list[str]) -> int:
    """Run ``kmsemu ARGS`` in a child of the server named by $KMSEMU_DOCS_SERVER."""
    import marshal
    import os
    import signal
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["KMSEMU_DOCS_SERVER"])
    payload = marshal.dumps({"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)})
    socket.send_fds(conn, [len(payload).to_bytes(4, "big")], [0, 1, 2])
    conn.sendall(payload)
    reader = conn.makefile("r")
    pid = int(reader.readline())

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105  (contextlib would cost the shim's start-up)
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = reader.readline()
    return int(status) if status.strip() else 1


def shim(python: str) -> str:
    """The text of an executable ``kmsemu`` that is ``call``."""
    return (
        f"#!{python} -S\nimport sys\n\n\n{inspect.getsource(call)}\n\n"
        "sys.exit(call(sys.argv[1:]))\n"
    )


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def _run_child(conn: socket.socket, fds: list[int], request: dict) -> None:  # type: ignore[type-arg]
    """In the forked child: become the caller's ``kmsemu`` and report the exit status."""
    import signal

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


def _import_everything() -> None:
    """Import every module of kmsemu and mak (the CLI loads its commands lazily), so that
    no child pays for an import (matplotlib for the simulator's report, the servers...)."""
    import importlib
    import pkgutil

    import kmsemu
    import mak

    for package in (kmsemu, mak):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith("__main__"):
                with contextlib.suppress(Exception):  # a module being moved: its users pay
                    importlib.import_module(module.name)


def serve(path: str) -> None:
    """Answer ``call`` on the Unix socket ``path`` until killed."""
    _import_everything()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the path appears once connections are accepted
    while True:
        conn, _ = listener.accept()
        header, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
        header += _read_exactly(conn, 4 - len(header))
        request = marshal.loads(_read_exactly(conn, int.from_bytes(header, "big")))
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
    serve(sys.argv[1])
