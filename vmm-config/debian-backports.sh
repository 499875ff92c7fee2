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

# fetch_mesa_backports DIR: lavapipe of bookworm-backports' Mesa (25.0,
# which imports dma-bufs; bookworm's 22.3 does not), with the libdrm it
# wants, unpacked into DIR unless it is there. Its other
# libraries are bookworm's (LLVM 15, xcb...): bookworm's mesa-vulkan-drivers
# and Vulkan loader are installed if missing. The Vulkan loader takes it
# with VK_DRIVER_FILES=DIR/usr/share/vulkan/icd.d/lvp_icd.json and
# LD_LIBRARY_PATH=DIR/usr/lib/x86_64-linux-gnu.
fetch_mesa_backports() {
    local dir=$1 lib=/usr/lib/x86_64-linux-gnu
    if [[ ! -f $dir$lib/libvulkan_lvp.so ]]; then
        echo "fetching lavapipe from bookworm-backports into $dir" >&2
        rm -rf "$dir"
        unpack_backports "$dir" mesa-vulkan-drivers libdrm2 libdrm-amdgpu1
    fi
    if [[ ! -e $lib/libvulkan.so.1 || ! -e $lib/libvulkan_lvp.so ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvulkan1 mesa-vulkan-drivers >&2
    fi
}
