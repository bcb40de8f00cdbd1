#!/usr/bin/env bash
# Make sure Debian's PostgreSQL server is installed (for `slimflow servers start --postgres` and the
# integration tests). Does nothing when initdb is already there; installs with apt-get as root;
# otherwise says what to run. Nothing is started here: `slimflow servers start` does that.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's postgresql package (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  exit 0
fi
echo "PostgreSQL server binaries (initdb) not found: install Debian's package, e.g." >&2
echo "  sudo apt-get install -y postgresql" >&2
exit 1
