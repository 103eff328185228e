#!/usr/bin/env bash
# The one quickstart command: installs what is missing, builds drmesh, and runs a whole
# local mesh in the foreground (Ctrl-C stops it). Extra arguments go to `drmesh quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace --bins
exec target/release/drmesh quickstart --dir "${DRMESH_QUICKSTART_DIR:-/tmp/drmesh-quickstart}" "$@"
