"""py-spy: record a server during a timed window, and say where its samples went."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchkit.env import REPO, tool
from benchkit.waits import sleep_until

Spy = tuple[subprocess.Popen[bytes], Path]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_LOOP_FUNCS = ("Runner.run", "run_until_complete", "run_forever", "run")


def start_py_spy(
    out_dir: Path, pid: int, name: str, start: float, duration: float, native: bool = False
) -> Spy:
    """py-spy recording ``pid`` for ``duration`` s from ``start`` (monotonic) into
    ``out_dir/NAME.txt`` (raw, collapsed stacks)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (re.sub(r"[^\w.-]+", "_", name) + ".txt")
    sleep_until(start)
    # Blocking mode (py-spy pauses the server for each sample): slower, but the stacks are
    # exact; --nonblocking over-weights the lines that sit in a syscall.
    argv = [
        tool("py-spy"),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(duration))),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    if native:
        argv.append("--native")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, out


def finish_py_spy(spy: Spy, timeout: float = 60.0) -> Path:
    """Wait for py-spy to finish (killed after ``timeout`` s); its output file."""
    proc, out = spy
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return out


@dataclass(frozen=True)
class Components:
    """How to name what a sample was spent on, from its innermost frames outwards.

    A frame counts when ``scope`` is empty or its path starts with ``scope`` (and not with
    ``exclude``); other frames (libraries) count for the frame that called them. For a
    counted frame, ``lines`` are tried first (path fragment, regular expression on the
    source line, name), then ``parts`` (path fragment, name); a counted frame with a scope
    that matches neither is named by its path. An uncounted event-loop frame is ``loop``.
    """

    parts: tuple[tuple[str, str], ...]
    lines: tuple[tuple[str, str, str], ...] = ()
    scope: str = ""
    exclude: str = "\0"
    loop: str = "event loop itself"
    other: str = "other"

    def name(self, frames: list[str], cache: dict[str, list[str]]) -> str:
        for frame in reversed(frames):
            match = _FRAME.match(frame)
            if not match:
                continue
            path, line = match["file"], int(match["line"] or 0)
            if path.startswith(self.scope) and not path.startswith(self.exclude):
                for fragment, pattern, name in self.lines:
                    if fragment in path and re.search(pattern, _source_line(path, line, cache)):
                        return name
                for fragment, name in self.parts:
                    if fragment in path:
                        return name
                if self.scope:
                    return path
            if match["func"] in _LOOP_FUNCS:
                return self.loop
        return self.other


def _source_line(path: str, line: int, cache: dict[str, list[str]]) -> str:
    if path not in cache:
        try:
            cache[path] = (REPO / path).read_text().splitlines()
        except OSError:
            cache[path] = []
    lines = cache[path]
    return lines[line - 1] if 0 < line <= len(lines) else ""


def summarize_profile(
    path: Path, components: Components, top: int = 20, whole_loop: bool = False
) -> str:
    """Shares of py-spy's samples (collapsed stacks) by component, by function (self and
    inclusive, line numbers folded) and by line. ``whole_loop``: leave out of the last table
    the frames in (nearly) every sample, but the event loop's."""
    component: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    cache: dict[str, list[str]] = {}
    total = 0
    for row in path.read_text().splitlines():
        stack, _, count_text = row.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        component[components.name(frames, cache)] += count
        by_line[frames[-1]] += count
        folded = [re.sub(r":\d+\)$", ")", f) for f in frames]
        own[folded[-1]] += count
        for frame in set(folded):
            inclusive[frame] += count
    if not total:
        return "(no samples)"

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}"

    lines = [f"{total} samples", "", "| % | component |", "|---:|---|"]
    lines += [f"| {pct(n)} | {name} |" for name, n in component.most_common()]
    lines += ["", "| self % | incl. % | function |", "|---:|---:|---|"]
    lines += [f"| {pct(n)} | {pct(inclusive[f])} | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| self % | line |", "|---:|---|"]
    lines += [f"| {pct(n)} | `{f}` |" for f, n in by_line.most_common(top)]
    lines += ["", "| incl. % | function |", "|---:|---|"]
    lines += [
        f"| {pct(n)} | `{f}` |"
        for f, n in inclusive.most_common(top + 10)
        if not whole_loop or n < total * 0.999 or "Runner.run" in f
    ]
    return "\n".join(lines)


def print_profile(out: Path, components: Components, whole_loop: bool = False) -> None:
    if out.exists():
        summary = summarize_profile(out, components, whole_loop=whole_loop)
        print(f"\npy-spy profile: {out}\n{summary}", file=sys.stderr)


def top_frames(path: Path, top: int = 12) -> list[str]:
    """Own-time shares of the hottest frames in a py-spy raw (collapsed) file."""
    if not path.exists():
        return [f"{path}: no profile"]
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1] if frames else "?"
        own[re.sub(r" \(/.*/(site-packages|lib/python3\.\d+)/", " (", leaf)] += int(count)
        total += int(count)
    if not total:
        return [f"{path}: empty profile"]
    return [f"{path.name}: {total} samples"] + [
        f"  {count / total * 100:5.1f}%  {frame}" for frame, count in own.most_common(top)
    ]
