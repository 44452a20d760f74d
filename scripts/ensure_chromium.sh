#!/usr/bin/env bash
# Make sure Debian's Chromium is installed at /usr/bin/chromium (the browser tests drive it with
# Playwright; Playwright's own browser download does not work here). Idempotent: does nothing when
# the binary is already there. Installs with apt-get, non-interactively; needs root (or sudo).
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: $CHROMIUM is missing and apt-get is not available;" \
         "install Chromium yourself and set CHROMIUM=/path/to/chromium" >&2
    exit 1
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "ensure_chromium: $CHROMIUM is missing; run as root: apt-get install chromium" >&2
        exit 1
    fi
fi
echo "ensure_chromium: installing Debian's chromium (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
if [[ ! -x "$CHROMIUM" ]]; then
    echo "ensure_chromium: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
"$CHROMIUM" --version >&2
