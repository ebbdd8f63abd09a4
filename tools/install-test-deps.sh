#!/usr/bin/env bash
# Installs the non-Python clients the integration tests drive: kcat (Debian
# package) and kafkajs (npm, pinned by tests/js/package-lock.json).
#
# Idempotent and quiet when everything is already there, so `make test` can
# call it on every run. Needs no standard input; installing kcat needs root
# (CI runs as root) or passwordless sudo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JS_DIR="$ROOT/tests/js"

say() { echo "install-test-deps: $*" >&2; }

install_kcat() {
    command -v kcat >/dev/null 2>&1 && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            say "kcat is missing and we are not root: install it with 'apt-get install kcat'"
            return 1
        fi
    fi
    say "installing kcat (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    local out
    out="$(mktemp)"
    if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends kcat; } \
            </dev/null >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        say "apt-get could not install kcat"
        return 1
    fi
    rm -f "$out"
    command -v kcat >/dev/null 2>&1
}

STAMP="$JS_DIR/node_modules/.keel-installed"

js_fingerprint() {
    cat "$JS_DIR/package.json" "$JS_DIR/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1
}

js_deps_current() {
    # The stamp holds the fingerprint of the manifests the last install used.
    [ -f "$JS_DIR/node_modules/kafkajs/package.json" ] && [ -f "$STAMP" ] &&
        [ "$(cat "$STAMP")" = "$(js_fingerprint)" ]
}

install_js() {
    if ! command -v npm >/dev/null 2>&1; then
        say "npm is missing: install Node.js 18+ (apt-get install nodejs npm)"
        return 1
    fi
    js_deps_current && return 0
    say "installing kafkajs (npm) in tests/js"
    (
        cd "$JS_DIR"
        if [ -f package-lock.json ]; then
            npm ci --no-audit --no-fund --loglevel=error </dev/null >/dev/null
        else
            npm install --no-audit --no-fund --loglevel=error </dev/null >/dev/null
        fi
    )
    js_fingerprint >"$STAMP"
}

install_kcat
install_js
