#!/usr/bin/env bash
# Make sure Debian's Chromium and its WebDriver are installed (for the browser tests, marked
# `browser`: they drive the Prefect and MLflow UIs with Selenium). Does nothing when both are
# there; installs with apt-get as root; otherwise says what to run.
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if (have chromium || have chromium-browser || have google-chrome) && have chromedriver; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && have apt-get; then
  echo "installing Debian's chromium and chromium-driver (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
  exit 0
fi
echo "Chromium and chromedriver not found: install Debian's packages, e.g." >&2
echo "  sudo apt-get install -y chromium chromium-driver" >&2
exit 1
