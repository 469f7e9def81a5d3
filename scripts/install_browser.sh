#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/browser/), unless it is there already.
# Playwright drives it through executable_path; no browser is downloaded by Playwright itself.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=()
[ "$(id -u)" = "0" ] || SUDO=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq chromium
/usr/bin/chromium --version
