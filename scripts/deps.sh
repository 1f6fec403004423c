#!/usr/bin/env bash
# Install the Debian packages rlpo's build, tests, demo and benchmarks need, if missing.
# Safe to re-run: does nothing when everything is present. Needs root (or sudo) on Debian 12.
set -euo pipefail
pkgs=(cmake g++ make libeigen3-dev catch2 libfmt-dev libbenchmark-dev python3-torch gnuplot-nox fonts-liberation
      pybind11-dev python3-pybind11 python3-pytest python3-numpy libtorch-dev libopenmpi-dev openmpi-bin)
[ "${RLPO_DEPS_CLANG:-0}" = 1 ] && pkgs+=(clang libomp-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "rlpo: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
