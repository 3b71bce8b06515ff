#!/usr/bin/env bash
# Installs what runnel's tests need on a fresh Debian/Ubuntu machine:
#   - etcd (the real metastore the integration tests start),
#   - kcat (a librdkafka command-line client),
#   - promtool and debootstrap (the compose test),
#   - a Python virtualenv with Kafka clients and pytest (tests/python/.venv).
# protoc is not needed: the build uses the vendored one (see .cargo/config.toml).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup: not root and no sudo; install etcd-server and kcat yourself" >&2
  fi
fi

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
# The compose test: promtool checks the alert rules, debootstrap builds the
# local base images (no container registry needed).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # The Debian package starts a system etcd on 2379; the tests start their
    # own on free ports and do not need it.
    if command -v systemctl >/dev/null 2>&1; then
      $SUDO systemctl disable --now etcd prometheus >/dev/null 2>&1 || true
    fi
  else
    echo "setup: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

VENV=tests/python/.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import confluent_kafka, kafka, aiokafka, pytest, snappy, lz4, zstandard" >/dev/null 2>&1; then
  echo "setup: installing Python Kafka clients (tests/python/requirements.txt)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
fi
echo "setup: ok (etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'), kcat, $("$VENV/bin/python" --version))"
