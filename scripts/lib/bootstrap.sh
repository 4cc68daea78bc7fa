# Shared setup of scripts/test and scripts/demo: virtualenv, packages, private services.
# Sourced, not executed: expects $root; defines $venv and $py, exports the CACHESYNC_* URLs.
# shellcheck shell=bash

die() { echo "${0##*/}: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

# --- virtualenv ----------------------------------------------------------------------------
venv="$root/.venv"
py="$venv/bin/python"
if [ ! -x "$py" ] || ! "$py" -c 'import sys' >/dev/null 2>&1; then
    step "creating $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv"; then
        # Debian/Ubuntu ship venv/ensurepip separately.
        rm -rf "$venv"
        pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
        command -v apt-get >/dev/null || die "python3 -m venv failed and apt-get is unavailable"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3-venv "python${pyver}-venv" \
            || { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                 $sudo apt-get install -y -q python3-venv "python${pyver}-venv"; } \
            || die "could not install python3-venv"
        python3 -m venv "$venv" || die "python3 -m venv failed"
    fi
fi

stamp="$venv/.cachesync-install-stamp"
want="$( (cat pyproject.toml; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    step "installing .[all,dev] into $venv"
    "$py" -m pip install -q --upgrade pip || echo "warning: pip upgrade failed; continuing" >&2
    "$py" -m pip install -q -e '.[all,dev]' || die "pip install -e '.[all,dev]' failed"
    echo "$want" > "$stamp"
else
    echo "virtualenv up to date (pyproject.toml unchanged since last install)"
fi
export PATH="$venv/bin:$PATH"

# --- services --------------------------------------------------------------------------------
step "services"
"$root/scripts/services" start || die "services failed to start (logs: .services/logs/)"
set -a
# shellcheck disable=SC1091
. "$root/.services/env"
set +a

