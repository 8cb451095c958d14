#!/usr/bin/env bash
# Fuzz the protocol frame decoder (needs a nightly toolchain and cargo-fuzz:
# `cargo install cargo-fuzz --locked`). Default: 60 seconds.
#   ./scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
cargo +nightly fuzz run frame_decoder -- -max_total_time="${1:-60}"
