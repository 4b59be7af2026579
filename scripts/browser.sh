#!/usr/bin/env bash
# Makes sure a headless browser is on the machine for the status-page test: Debian's chromium
# package (installed when missing and apt can reach its mirrors). Prints the path.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then command -v "$b"; exit 0; fi
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "browser: installing Debian's chromium for the status-page test" >&2
  { apt-get install -y --no-install-recommends chromium || { apt-get update && apt-get install -y --no-install-recommends chromium; }; } >/dev/null 2>&1
fi
command -v chromium || { echo "browser: no chromium; install Debian's chromium package" >&2; exit 1; }
