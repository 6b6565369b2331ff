#!/usr/bin/env bash
# Scenario bench-smoke of `cargo xtask test`: the x86 figures of `cargo
# xtask bench` (exit round trips, interrupt latencies, APIC round trips) on
# one CPU model with fewer iterations (the figures are deterministic
# instruction counts), failing when one exceeds its regression bound
# (xtask/src/bench.rs BOUNDS), so a slower exit or interrupt path shows in
# CI.
set -eu
cd "$(dirname "$0")/.."
exec cargo xtask bench --check --filter EPYC --iters 2000
