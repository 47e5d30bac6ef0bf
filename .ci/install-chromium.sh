#!/usr/bin/env bash
# Install Debian's Chromium for tests/test_browser.py when it is missing and we may (root + apt-get).
# Never fails the build: without Chromium the browser test skips and says why.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and cannot install it here (needs root + apt-get); the browser test will skip"
  exit 0
fi
echo "installing Debian's chromium for the browser test..."
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
  || echo "chromium: apt-get install failed; the browser test will skip"
exit 0
