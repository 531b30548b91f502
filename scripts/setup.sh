#!/usr/bin/env bash
# Installs what vfile needs on Debian 12, only where it is missing:
#   - Debian packages: FUSE 3 (and headers to build pyfuse3), ClamAV's clamd and
#     clamdscan, c-icap with its virus_scan module (real appliances for tests);
#   - a virtual environment at .venv with vfile and its dev extras.
# Idempotent: a second run with nothing missing takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(fuse3 libfuse3-dev pkg-config gcc python3-venv clamav-daemon clamdscan c-icap libc-icap-mod-virus-scan
      git rsync fio cpio sqlite3 redis-server e2fsprogs attr)  # real clients (t4_clients_*), Redis (fleet
      # cache), mkfs.ext2/ext4 (whole-second source of t4_escape_test, frozen state disk),
      # getfattr (t4_xattr_creds22r_test runs it as another user)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packaged daemons are started by their postinst scripts; vfile's tests
  # start their own instances on loopback, so keep the system ones out of the way.
  for svc in clamav-daemon clamav-freshclam c-icap redis-server; do
    (command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1) || true
    [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  done
fi

PY=${PYTHON:-python3}
stamp=.venv/.vfile-installed
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
