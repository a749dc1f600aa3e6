#!/bin/sh
# Debian packages the tests need: redis-server, rabbitmq-server (the tests
# of the RabbitMQ broker start a private node of their own), chromium with
# its driver for the dashboard's browser test, and valgrind for the
# instruction counts (bench/instructions.py). Installed only when missing.
set -e
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$missing rabbitmq-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
command -v valgrind >/dev/null 2>&1 || missing="$missing valgrind"
# Node packages of the browser tests (package-lock.json next to each
# package.json), installed from the npm registry when missing.
if command -v npm >/dev/null 2>&1; then
  for dir in tests/web/axe tests/browser; do
    if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
      echo "installing node packages in $dir"
      (cd "$dir" && npm ci --no-audit --no-fund --silent)
    fi
  done
fi
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q $missing
