#!/bin/sh
# Install Debian's Chromium for the officer console's browser test (Playwright drives it
# through executable_path; `playwright install` is never used: no browser download).
#
# Idempotent and silent once installed: the test fixture calls it when /usr/bin/chromium
# is missing. Needs root (or password-less sudo); never prompts.
set -eu

have_browser() {
    [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1
}

if have_browser; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install-browser.sh: chromium is not installed and installing it needs root" >&2
    echo "  (run: sudo $0, or apt-get install chromium)" >&2
    exit 1
fi

echo "install-browser.sh: installing Debian's chromium" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=300
# Recommends pull in fonts and drivers the headless test does not need.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    chromium fonts-liberation >/dev/null

if ! have_browser; then
    echo "install-browser.sh: apt-get finished but no chromium binary was found" >&2
    exit 1
fi
echo "install-browser.sh: $(chromium --version 2>/dev/null || echo chromium) installed" >&2
