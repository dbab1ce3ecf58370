# metastudio-watcher container image.
#
# No `# syntax=` frontend line: the classic builder and BuildKit both build this
# file without fetching anything from Docker Hub. The base image and the Python
# package index are build arguments, for networks where Docker Hub or PyPI are
# unreachable (a registry mirror, a local image, a PyPI mirror):
#
#   docker build -t metastudio-watcher .
#   docker build -t metastudio-watcher \
#     --build-arg BASE_IMAGE=registry.example.cn/library/python:3.12.11-slim-bookworm \
#     --build-arg PIP_INDEX_URL=https://mirrors.example.cn/pypi/simple .
#
# BASE_IMAGE needs python3 with venv and pip >= 22.3 (the builder uses
# `pip --python`; the runtime stage removes pip), plus useradd. Dependencies are exactly requirements.lock
# (`make lock` refreshes it).
#
# Run (read-only root filesystem, config and credentials root-owned, mode 0640):
#   docker run -d --name metastudio-watcher --read-only --init \
#     --cap-drop=ALL --security-opt=no-new-privileges \
#     -v metastudio-state:/var/lib/metastudio-watcher \
#     -v /etc/metastudio-watcher/config.yaml:/etc/metastudio-watcher/config.yaml:ro \
#     -v /etc/metastudio-watcher/ak:/run/secrets/ak:ro \
#     -v /etc/metastudio-watcher/sk:/run/secrets/sk:ro \
#     metastudio-watcher
#
# The process runs as UID 10001 in group 0 (root's group, no privileges): files
# that are root:root 0640 on the host are readable inside and by nobody else on
# the host; the state directory is group-0 writable, so an arbitrary UID in
# group 0 (OpenShift's restricted SCC) works too.
#
# config.yaml: `storage: /var/lib/metastudio-watcher/state.db`, and
# `ak_file: ak` / `sk_file: sk`, which resolve under $CREDENTIALS_DIRECTORY
# (/run/secrets here, where Docker/Compose secrets land; under systemd it is
# the LoadCredential= directory), so one config works in both places.
# There is no $NOTIFY_SOCKET in a container: the daemon's sd_notify is a no-op
# and HEALTHCHECK below takes over the watchdog's role.

# Both stages use the same base image (pin it by exact tag or digest): the venv
# copied from the builder links to that image's python3.
ARG BASE_IMAGE=python:3.12.11-slim-bookworm

# ---------------------------------------------------------------------------
# Builder: a pip-less venv at /opt/venv with exactly the locked dependencies.
# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# Where pip looks for packages (a mirror, a devpi, an Artifactory remote).
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md LICENSE requirements.lock ./
COPY watcher/ ./watcher/

# --without-pip: the venv never holds pip or setuptools; the builder's pip
# installs into it (--python). --no-deps on both: the lock is the complete set,
# and `pip check` proves it. pip byte-compiles, so the image never writes .pyc.
RUN python3 -m venv --without-pip /opt/venv \
 && python3 -m pip --python /opt/venv/bin/python install --no-deps \
      --index-url "${PIP_INDEX_URL}" -r requirements.lock \
 && python3 -m pip --python /opt/venv/bin/python install --no-deps \
      --index-url "${PIP_INDEX_URL}" . \
 && python3 -m pip --python /opt/venv/bin/python check \
 && /opt/venv/bin/metastudio-watcher --version

# ---------------------------------------------------------------------------
# Runtime: the base image without pip/setuptools, plus the venv.
# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="metastudio-watcher" \
      org.opencontainers.image.description="Watches Huawei Cloud MetaStudio voice-training jobs and alerts on state changes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# No package installer at run time: pip, setuptools and wheel go (the base
# image may ship them). A passwd entry for UID 10001 in group 0 so that
# getpwuid() works; the state directory is group-0 writable (mode 2770) for
# any UID in group 0, and the config directory stays root-owned.
RUN (python3 -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true) \
 && rm -f /usr/local/bin/pip /usr/local/bin/pip3* \
 && ! python3 -c "import pip" 2>/dev/null \
 && ! python3 -c "import setuptools" 2>/dev/null \
 && useradd --system --uid 10001 --gid 0 --no-create-home \
      --home-dir /var/lib/metastudio-watcher --shell /usr/sbin/nologin watcher \
 && install -d -m 2770 -o 10001 -g 0 /var/lib/metastudio-watcher \
 && install -d -m 0755 /etc/metastudio-watcher

COPY --from=builder /opt/venv /opt/venv

# Read-only root filesystem: no .pyc writes, and every other write (SQLite
# temp files, Python's tempfile, anything under $HOME) goes to the state
# volume. Alternatively run with `--tmpfs /tmp` and override TMPDIR=/tmp.
# No secrets here: credentials come from files under $CREDENTIALS_DIRECTORY.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/metastudio-watcher \
    TMPDIR=/var/lib/metastudio-watcher \
    CREDENTIALS_DIRECTORY=/run/secrets

VOLUME ["/var/lib/metastudio-watcher"]
WORKDIR /var/lib/metastudio-watcher

# The optional /metrics endpoint listens on 127.0.0.1:9464, i.e. inside the
# container only, so nothing is EXPOSEd.

USER 10001:0

# The daemon handles SIGTERM itself (STOPPING, flush state, exit 0).
STOPSIGNAL SIGTERM

# `health` imports neither apprise nor aiohttp: ~0.16 s of CPU per check
# (benchmarks/bench_health.py).
HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 \
    CMD ["metastudio-watcher", "health", "-c", "/etc/metastudio-watcher/config.yaml"]

ENTRYPOINT ["metastudio-watcher"]
CMD ["run", "-c", "/etc/metastudio-watcher/config.yaml"]
