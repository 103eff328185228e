#!/usr/bin/env bash
# The one test command: installs what is missing, builds every binary, runs every test
# (unit, property and end-to-end tests with real PostgreSQL, coordinator and agents).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
