#!/bin/sh
# Installs metastudio-watcher where systemd/metastudio-watcher.service expects it:
# a venv at $PREFIX (default /opt/metastudio-watcher, outside /home, which the
# unit's ProtectHome=yes hides), dependencies pinned by requirements.lock, the
# command linked as /usr/local/bin/metastudio-watcher, the unit in
# /etc/systemd/system. Run as root from the source tree: `make install`.
# Offline: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR PACKAGE=metastudio-watcher.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=${PREFIX:-/opt/metastudio-watcher}
python=${PYTHON:-python3}
package=${PACKAGE:-$src}

"$python" -m venv --clear "$prefix"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check \
  --constraint "$src/requirements.lock" "$package"
ln -sfn "$prefix/bin/metastudio-watcher" /usr/local/bin/metastudio-watcher
install -D -m 0644 "$src/systemd/metastudio-watcher.service" \
  /etc/systemd/system/metastudio-watcher.service
install -d -m 0755 /etc/metastudio-watcher
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
/usr/local/bin/metastudio-watcher --version
echo "installed; next: /etc/metastudio-watcher/{config.yaml,ak,sk}, then" \
  "systemctl enable --now metastudio-watcher"
