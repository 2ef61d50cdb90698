#!/bin/sh
# Install Debian's ClickHouse server and client (bookworm: 18.16) when the server binary is missing.
#
# Idempotent and silent once installed: the test set-up (make test) and developers call it
# unconditionally. Needs root (or password-less sudo); never prompts. The system service is
# neither started nor enabled: Vigie's tests and dev tools start their own server with a
# private config and data dir (vigie.sinks.clickhouse_server).
set -eu

# Debian puts the server in /usr/sbin, which is not on a normal user's PATH.
have_server() {
    [ -x /usr/sbin/clickhouse-server ] || [ -x /usr/bin/clickhouse-server ] \
        || command -v clickhouse-server >/dev/null 2>&1
}

if have_server; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install.sh: clickhouse-server is not installed and installing it needs root" >&2
    echo "  (run: sudo $0, or apt-get install clickhouse-server clickhouse-client)" >&2
    exit 1
fi

# Keep maintainer scripts from starting the service: invoke-rc.d and deb-systemd-invoke
# both ask /usr/sbin/policy-rc.d, and 101 means "action forbidden". An existing policy
# (a container image's own) is left alone.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# vigie deploy/clickhouse/install.sh: no service starts during install\nexit 101\n' \
        | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    OWN_POLICY=1
fi
cleanup() {
    if [ "$OWN_POLICY" -eq 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "install.sh: installing Debian's clickhouse-server and clickhouse-client" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=300
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    clickhouse-server clickhouse-client >/dev/null

# Belt and braces: if a service manager started the server anyway, stop it and keep it
# from starting at boot (it would hold ports 9000/8123 for nothing).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl stop clickhouse-server.service >/dev/null 2>&1 || true
    $SUDO systemctl disable clickhouse-server.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/clickhouse-server ]; then
    # The kernel truncates process names to 15 characters: "clickhouse-serv".
    if pgrep -u clickhouse clickhouse-serv >/dev/null 2>&1; then
        $SUDO /etc/init.d/clickhouse-server stop >/dev/null 2>&1 || true
    fi
fi

if ! have_server; then
    echo "install.sh: apt-get finished but no clickhouse-server binary was found" >&2
    exit 1
fi
echo "install.sh: clickhouse-server $(dpkg-query -W -f='${Version}' clickhouse-server 2>/dev/null) installed" >&2
