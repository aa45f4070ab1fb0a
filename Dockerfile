# kmsemu lab in a container: the KMS host (1688/tcp), the lab DNS (5300/udp+tcp) and the
# MAK service, portal, dashboard, /metrics, /healthz and /readyz (8688/tcp) in one process.
# Non-root (uid/gid 10001), works with a read-only root filesystem, state on a volume.
#
#   docker build -t kmsemu .
#   docker run -d --name kmsemu --read-only --tmpfs /tmp -v kmsemu:/var/lib/kmsemu \
#       -p 1688:1688 -p 5300:5300/udp -p 5300:5300/tcp -p 8688:8688 kmsemu
#
# See docs/deploy.md (compose, the admin token, configuration, SIGHUP reload).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- build: a wheel of kmsemu and of each dependency (all have binary wheels: no compiler
# here either), then those wheels installed offline into a venv without pip. pip compiles
# the .pyc files now, at build time; at run time nothing is written.
# (No BuildKit-only syntax, so the classic builder works too.)
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kmsemu ./kmsemu
COPY mak ./mak
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/kmsemu \
    && python -m pip --python /opt/kmsemu/bin/python install --no-index --no-cache-dir \
        --disable-pip-version-check --root-user-action=ignore --find-links=/wheels kmsemu

# ---- final: the same base with that venv (same path, same interpreter) and nothing else
FROM ${PYTHON_IMAGE}

# A fixed uid/gid so that a bind-mounted state directory can be chowned to it beforehand.
# The home directory is the state volume: nothing else in the image is writable by the user.
RUN groupadd --system --gid 10001 kmsemu \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/kmsemu \
        --no-create-home --shell /usr/sbin/nologin kmsemu \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/kmsemu

COPY --from=build /opt/kmsemu /opt/kmsemu
RUN PYTHONDONTWRITEBYTECODE=1 /opt/kmsemu/bin/kmsemu --version

# The lab listens on every address inside the container (its defaults for DNS and HTTP are
# loopback only) and logs JSON. These are environment variables rather than arguments so
# that `docker run IMAGE lab --min-count 25` keeps them; `-e` or a flag overrides them.
ENV PATH=/opt/kmsemu/bin:$PATH \
    KMSEMU_HOME=/var/lib/kmsemu \
    KMSEMU_LAB_HTTP_LISTEN=0.0.0.0:8688 \
    KMSEMU_LAB_DNS_LISTEN=0.0.0.0:5300 \
    KMSEMU_LAB_LOG_FORMAT=json \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# lab.sqlite3, mak/admin-token and an optional lab.toml live here (a named volume starts
# owned by 10001:10001, mode 0700, copied from the image).
VOLUME ["/var/lib/kmsemu"]
WORKDIR /var/lib/kmsemu
USER 10001:10001

# KMS host; lab DNS; MAK service, portal, dashboard, /metrics, /healthz, /readyz.
# Every port is above 1023: no capability is needed (`--cap-drop ALL` works).
EXPOSE 1688/tcp 5300/udp 5300/tcp 8688/tcp

# SIGTERM stops every part cleanly (exit 0); SIGHUP (`docker kill -s HUP`) reloads lab.toml.
STOPSIGNAL SIGTERM

# Liveness without curl: the image's own Python, no proxy, exit 1 unless 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/kmsemu/bin/python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8688/healthz', timeout=4); sys.exit(r.status != 200)"]

ENTRYPOINT ["/opt/kmsemu/bin/kmsemu"]
CMD ["lab"]
