"""A whole ``kmsemu lab`` under test: started on 127.0.0.1, sampled, asked, stopped, read."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchkit.env import kmsemu_argv
from benchkit.procs import ServerProcess, http_call, open_fds, process_times, status_kib
from benchkit.traffic.mak import KEY_LIMIT
from benchkit.traffic.streams import split_address
from benchkit.waits import Cpus
from kmsemu.keys.product_key import KeyType, mint


class Lab(ServerProcess):
    """``kmsemu lab`` with its stderr in a file; the ready line gives the addresses."""

    def __init__(self, workdir: Path, cpus: Cpus, token: str, command: str | None = None) -> None:
        self.kmsemu = kmsemu_argv(command)
        self.token = token
        self.home = workdir / "home"
        self.home.mkdir(parents=True)
        self.env = {**os.environ, "KMSEMU_HOME": str(self.home)}
        self.env.pop("KMSEMU_ADMIN_TOKEN", None)
        help_text = subprocess.run(
            [*self.kmsemu, "lab", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        ).stdout
        self.http_option = "--http-listen" if "--http-listen" in help_text else "--mak-listen"
        argv = [
            *self.kmsemu,
            "lab",
            "--kms-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            self.http_option,
            "127.0.0.1:0",
            "--admin-token",
            token,
            "--quiet",
        ]
        super().__init__(
            argv,
            workdir,
            r"^ready lab (.*)$",
            name="kmsemu lab",
            log_name="lab.log",
            cpus=cpus,
            env=self.env,
            timeout=60,
            poll=0.05,
            tail=3000,
        )
        self.ready_line = self.match.group(0)
        fields = dict(re.findall(r"(\w+)=(.*?)(?=\s+\w+=|$)", self.match.group(1)))
        kms = [a for a in re.split(r"[\s,]+", fields.get("kms", "")) if a]
        if not kms or "dns" not in fields or not ("http" in fields or "mak" in fields):
            self.stop()
            raise RuntimeError(f"cannot read the ready line: {self.ready_line!r}")
        self.kms = split_address(next((a for a in kms if a.startswith("127.")), kms[0]))
        self.dns = split_address(fields["dns"])
        self.http_url = fields.get("http") or fields["mak"]
        self.mak_url = fields.get("mak") or self.http_url
        self.http = split_address(self.http_url)
        self.mak = split_address(self.mak_url)
        self.mak_base = urlsplit(self.mak_url).path.rstrip("/")
        self.http_base = urlsplit(self.http_url).path.rstrip("/")

    def call(
        self,
        method: str,
        url: str,
        path: str,
        body: Any = None,
        admin: bool = False,
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        base = urlsplit(url).path.rstrip("/")
        token = self.token if admin else None
        return http_call(split_address(url), method, base + path, body, token, timeout)

    def wait_ready(self, limit: float = 30.0) -> dict[str, Any]:
        """Poll /readyz until 200 (when the lab has one); what /healthz and /readyz said."""
        out: dict[str, Any] = {}
        deadline = time.monotonic() + limit
        while True:
            try:
                status, body = self.call("GET", self.http_url, "/readyz", timeout=5)
            except OSError as exc:
                status, body = 0, repr(exc).encode()
            out["readyz"] = status
            if status in (200, 404) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if status not in (200, 404):
            out["readyz_body"] = body[:300].decode(errors="replace")
        for path in ("/healthz", "/v1/health"):
            url = self.http_url if path == "/healthz" else self.mak_url
            try:
                status, _ = self.call("GET", url, path, timeout=5)
            except OSError:
                status = 0
            out[path.strip("/").replace("/", "_")] = status
        return out

    def health_path(self) -> str:
        status, _ = self.call("GET", self.http_url, "/healthz", timeout=5)
        return self.http_base + "/healthz" if status == 200 else self.mak_base + "/v1/health"

    def metrics(self) -> dict[str, float] | None:
        """The lab's Prometheus /metrics as {series: value}, or None when it has none."""
        try:
            status, body = self.call("GET", self.http_url, "/metrics", timeout=10)
        except OSError:
            return None
        if status != 200:
            return None
        out = {}
        for line in body.decode(errors="replace").splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
        return out

    def register_key(self) -> tuple[str, dict[str, Any]]:
        """A new MAK registered with a limit of KEY_LIMIT; (key, its record)."""
        key = str(mint(KeyType.MAK, 0, serial=random.SystemRandom().randrange(1, 1 << 20)))
        status, body = self.call(
            "POST", self.mak_url, "/v1/keys", {"key": key, "limit": KEY_LIMIT}, admin=True
        )
        if status != 201:
            raise RuntimeError(f"POST /v1/keys answered {status}: {body[:300]!r}")
        return key, json.loads(body)

    def key_used(self, fingerprint: str) -> int | None:
        status, body = self.call("GET", self.mak_url, "/v1/keys", admin=True)
        if status != 200:
            return None
        for record in json.loads(body)["keys"]:
            if record["fingerprint"] == fingerprint:
                return int(record["used"])
        return None

    def sample(self) -> dict[str, Any]:
        """VmRSS/VmHWM (KiB), threads, open fds and utime+stime of the lab process."""
        out: dict[str, Any] = dict(status_kib(self.pid, ("VmRSS", "VmHWM", "Threads")))
        out["fds"] = open_fds(self.pid)
        out["utime_s"], out["stime_s"] = process_times(self.pid)
        out["cpu_s"] = out["utime_s"] + out["stime_s"]
        return out

    def state_location(self) -> Path:
        single = self.home / "lab.sqlite3"
        return single if single.exists() else self.home / "host"

    def host_totals(self) -> dict[str, Any]:
        """The host's request totals: ``kmsemu host status --json`` (KMSEMU_HOME set; then
        with ``--state`` naming lab.sqlite3 or the host directory), else the table itself."""
        state = self.state_location()
        out: dict[str, Any] = {"state": str(state), "tried": []}
        attempts: list[list[str]] = [[]]
        if state.exists():
            attempts.append(["--state", str(state)])
        for extra in attempts:
            argv = [*self.kmsemu, "host", "status", "--json", *extra]
            done: subprocess.CompletedProcess[str] | None = None
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=120, env=self.env
                )
                report = json.loads(done.stdout)
                out["total"] = int(report["requests"]["total"])
                out["failed"] = int(report["requests"]["failed"])
                out["source"] = shlex.join(["kmsemu", *argv[len(self.kmsemu) :]])
                return out
            except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
                why = done.stderr.strip().splitlines()[-1:] if done is not None else []
                out["tried"].append(
                    f"{shlex.join(argv[len(self.kmsemu) :])}: {why[0] if why else repr(exc)}"
                )
        db = state if state.suffix == ".sqlite3" else state / "host.sqlite3"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                total, failed = conn.execute(
                    "SELECT count(*), coalesce(sum(status != 0), 0) FROM requests"
                ).fetchone()
            out.update(total=int(total), failed=int(failed), source=f"SQLite {db.name}")
        except sqlite3.Error as exc:
            out["sqlite_error"] = repr(exc)
        return out

    def scan_log(self) -> dict[str, Any]:
        """What the lab wrote on stderr: activation lines, host events and their reasons,
        warnings, errors and the exceptions that ended its tracebacks."""
        events: collections.Counter[str] = collections.Counter()
        reasons: collections.Counter[str] = collections.Counter()
        warnings: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        exceptions: collections.Counter[str] = collections.Counter()
        first_errors: list[str] = []
        activations = lines = 0
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (\S+)")
        logging_line = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (\w+) (\S+) (.*)$")
        in_traceback = False
        with open(self.log_path, errors="replace") as f:
            for line in f:
                lines += 1
                match = stamp.match(line)
                if match:
                    in_traceback = False
                    event = match.group(1)
                    if event == "activation":
                        activations += 1
                        continue
                    events[event] += 1
                    reason = re.search(r'reason=("[^"]*"|\S+)', line)
                    if reason:
                        text = re.sub(r"\d+", "N", reason.group(1).strip('"'))
                        reasons[f"{event}: {text}"] += 1
                    continue
                match = logging_line.match(line)
                if match:
                    in_traceback = False
                    level, name, message = match.groups()
                    message = re.sub(r"\d+", "N", message.strip())[:160]
                    if level in ("ERROR", "CRITICAL"):
                        errors[f"{name}: {message}"] += 1
                        if len(first_errors) < 5:
                            first_errors.append(line.rstrip()[:300])
                    elif level == "WARNING":
                        warnings[f"{name}: {message}"] += 1
                    continue
                if line.startswith("Traceback"):
                    in_traceback = True
                    events["tracebacks"] += 1
                    continue
                if in_traceback and line.strip() and not line.startswith((" ", "\t")):
                    # the last line of a traceback: the exception
                    exceptions[line.strip()[:160]] += 1
                    in_traceback = False
        return {
            "lines": lines,
            "activation_lines": activations,
            "events": dict(events),
            "reasons": dict(reasons.most_common(30)),
            "warnings": dict(warnings),
            "errors": dict(errors),
            "exceptions": dict(exceptions),
            "first_errors": first_errors,
            "bytes": self.log_path.stat().st_size,
        }
