# Sourced by scripts/run and scripts/test: make .venv and install kmsemu into it.
# Idempotent and quiet when nothing changed; never prompts (CI has no stdin).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"  # the sourcing script passes it explicitly (see scripts/run)
case "$EXTRAS" in
    "" | test) ;;
    *) echo "setup: unknown extras '$EXTRAS' (scripts source this with \"\" or test)" >&2; exit 2 ;;
esac

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "kmsemu needs Python 3.11 or newer with venv; install it (e.g. apt-get install python3 python3-venv)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python)"
    echo "setup: creating $VENV with $PY" >&2
    "$PY" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml changed since the last install.
STAMP="$VENV/.kmsemu-installed-compat${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "setup: installing kmsemu${EXTRAS:+[$EXTRAS]} into $VENV" >&2
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2
    # compat mode puts the tree on sys.path with a plain .pth; the default mode's import
    # hook costs every kmsemu command ~20-50 ms at start (docs/benchmarks.md, CLI start-up)
    # (PYTHONWARNINGS: setuptools calls the mode transitional in a page-long warning)
    PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        -e "$ROOT${EXTRAS:+[$EXTRAS]}" --config-settings editable_mode=compat >&2 ||
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
            -e "$ROOT${EXTRAS:+[$EXTRAS]}" >&2
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
