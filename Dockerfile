# syntax=docker/dockerfile:1
#
# metastudio-watcher container image.
#
# Build:  docker build -t metastudio-watcher .
# Run (read-only root filesystem, credentials as secrets):
#   docker run -d --name metastudio-watcher --read-only --init \
#     --cap-drop=ALL --security-opt=no-new-privileges \
#     -v metastudio-state:/var/lib/metastudio-watcher \
#     -v "$PWD/config.yaml:/etc/metastudio-watcher/config.yaml:ro" \
#     -v "$PWD/ak:/run/secrets/ak:ro" -v "$PWD/sk:/run/secrets/sk:ro" \
#     metastudio-watcher
#
# config.yaml: `storage: /var/lib/metastudio-watcher/state.db`, and
# `ak_file: ak` / `sk_file: sk`, which resolve under $CREDENTIALS_DIRECTORY
# (/run/secrets here, where Docker/Compose secrets land; under systemd it is
# the LoadCredential= directory), so one config works in both places.
# There is no $NOTIFY_SOCKET in a container: the daemon's sd_notify is a no-op
# and HEALTHCHECK below takes over the watchdog's role.

# Both stages use the same base image (pinned by exact tag): the venv copied
# from the builder links to its /usr/local/bin/python3.12.

# ---------------------------------------------------------------------------
# Builder: wheel of the project and all its dependencies, installed into a
# self-contained venv at /opt/venv.
# ---------------------------------------------------------------------------
FROM python:3.12.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY watcher/ ./watcher/

# `pip wheel` builds the project's wheel and fetches/builds wheels for every
# dependency; the venv is then installed offline from exactly those wheels.
# pip byte-compiles on install, so the final image never needs to write .pyc.
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --find-links /wheels /wheels/*.whl \
 && /opt/venv/bin/metastudio-watcher --help > /dev/null

# ---------------------------------------------------------------------------
# Runtime: slim base + the venv, numeric non-root user, read-only friendly.
# ---------------------------------------------------------------------------
FROM python:3.12.11-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="metastudio-watcher" \
      org.opencontainers.image.description="Watches Huawei Cloud MetaStudio voice-training jobs and alerts on state changes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.11-slim-bookworm"

# A passwd entry for UID 10001 so getpwuid()/getpass work; the state volume is
# the only directory it owns (mode 0700). Config stays root-owned, read-only.
RUN groupadd --system --gid 10001 watcher \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/metastudio-watcher --shell /usr/sbin/nologin watcher \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/metastudio-watcher \
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

USER 10001:10001

# The daemon handles SIGTERM itself (STOPPING, flush state, exit 0).
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 \
    CMD ["metastudio-watcher", "health", "-c", "/etc/metastudio-watcher/config.yaml"]

ENTRYPOINT ["metastudio-watcher"]
CMD ["run", "-c", "/etc/metastudio-watcher/config.yaml"]
