"""The bench kit: what every script under scripts/ shares.

- ``env``: the repository, its venv (scripts re-execute themselves with it), the kmsemu
  command, installing a missing tool with apt-get;
- ``machine``: the machine/git header of every report;
- ``waits``: CPU placement (pinning), machine ticks, quiet waits, sleeping to a deadline;
- ``procs``: processes under test (start, ready line, /proc figures, stop), HTTP calls,
  forked worker processes and their event loop;
- ``stats``: medians, percentiles, ratios, slopes, interleaved rounds, re-measuring;
- ``report``: Markdown tables, JSON output, sections of docs/benchmarks.md;
- ``profile``: py-spy recording and summaries;
- ``kmsbench``: the KMS host bench (bench-host, bench-echo);
- ``lab``: a whole ``kmsemu lab`` under test (soak);
- ``postgres``: a throwaway PostgreSQL cluster (bench-mak);
- ``bind``: a throwaway BIND 9 ``named`` serving one zone (bench-dns --against-bind);
- ``traffic``: the load generators: KMS, MAK, DNS, malformed, the soak's mix;
- ``instructions``: the host's request path in instructions, under callgrind
  (bench-instructions).

Only ``env`` is safe to import before the venv is in place; scripts import it first:

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchkit.env import ensure_venv

    if __name__ == "__main__":
        ensure_venv(__file__)
"""
