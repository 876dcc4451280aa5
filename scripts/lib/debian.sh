# shellcheck shell=bash
# Shared by the set-up scripts: which Debian packages are missing, and installing them.
# Source it; it defines functions only. Packages are checked with dpkg-query, never by
# looking for files: a file can be there without its package (built by hand, left over),
# and a package's files are not always where a glob expects them (libclang-dev's
# libclang.so vs libclang-cpp14's libclang-cpp.so).

# has_dpkg: true on a Debian-based system (where the names below mean something).
has_dpkg() { command -v dpkg-query >/dev/null 2>&1; }

# debs_missing PKG...: prints, one per line, the packages dpkg does not report installed.
debs_missing() {
    local p
    for p in "$@"; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
            printf '%s\n' "$p"
        fi
    done
}

# apt_install WHO PKG...: installs the packages with apt-get (as root, or through sudo);
# WHO names the calling script in messages. `apt-get update` runs once per call.
apt_install() {
    local who="$1"
    shift
    [ "$#" -gt 0 ] || return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        printf '%s: error: missing Debian packages %s and no apt-get to install them\n' "$who" "$*" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            printf '%s: error: need to install %s but not running as root and sudo is not available;\n' "$who" "$*" >&2
            printf '       run as root: apt-get update && apt-get install -y %s\n' "$*" >&2
            return 1
        fi
        sudo=(sudo)
    fi
    printf '%s: installing %s\n' "$who" "$*" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >/dev/null || {
        printf '%s: error: apt-get update failed\n' "$who" >&2
        return 1
    }
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null || {
        printf '%s: error: apt-get install %s failed\n' "$who" "$*" >&2
        return 1
    }
    local still
    still="$(debs_missing "$@")"
    if [ -n "$still" ]; then
        printf '%s: error: still not installed after apt-get: %s\n' "$who" "${still//$'\n'/ }" >&2
        return 1
    fi
}
