# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Sourced by the build scripts: makes Debian's bookworm-backports suite
# (binary and source packages) available to apt. Needs root.
ensure_backports() {
    local sources=/etc/apt/sources.list.d/accel-bookworm-backports.sources
    if [[ ! -f $sources ]]; then
        echo "adding the bookworm-backports suite (deb and deb-src)" >&2
        cat > "$sources" <<'SOURCES'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
        apt-get update -qq >&2
    fi
}

# unpack_backports DIR PACKAGE...: downloads the PACKAGEs of
# bookworm-backports (not installed) and unpacks them all into DIR.
unpack_backports() {
    local dir=$1 tmp deb
    shift
    ensure_backports
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -t bookworm-backports "$@" >&2)
    mkdir -p "$dir"
    for deb in "$tmp"/*.deb; do
        dpkg-deb -x "$deb" "$dir"
    done
    rm -rf "$tmp"
}
