#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Builds the Vulkan engine's compute shaders: each NAME.comp here (GLSL)
# into NAME.spv (SPIR-V), which is checked in next to it and embedded in the
# daemon with include_bytes! (backend/src/engine/vulkan/compute.rs).
#
# The compiler is Debian bookworm's glslang-tools 12.0.0
# (`apt-get install -y glslang-tools`), run as
#     glslangValidator -V --target-env vulkan1.1 -o NAME.spv NAME.comp
# Without -g it writes no debug information (no path, no date), so the
# output is the same bytes on every machine and every run.
#
#   build.sh           rebuilds the .spv files in place.
#   build.sh --check   rebuilds them into a temporary directory and fails
#                      (exit 1) if any differs from the one checked in
#                      (for CI: a .comp edited without rebuilding, or a
#                      different compiler).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
shaders="compare crc32c sha256"
expected_version="12.0.0"

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if ! command -v glslangValidator >/dev/null 2>&1; then
    echo "build.sh: glslangValidator not found (Debian: apt-get install -y glslang-tools)" >&2
    exit 1
fi
version=$(glslangValidator --version | sed -n 's/^Glslang Version: [0-9]*:\([0-9.]*\).*/\1/p')
if [ "$version" != "$expected_version" ]; then
    echo "build.sh: warning: glslang $version, not $expected_version (bookworm's):" \
        "the output may differ from the checked-in files" >&2
fi

if $check; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
else
    out=$here
fi

status=0
cd "$here"
for name in $shaders; do
    # Quiet unless it fails: glslangValidator prints the file name.
    if ! log=$(glslangValidator -V --target-env vulkan1.1 -o "$out/$name.spv" "$name.comp" 2>&1); then
        echo "$log" >&2
        echo "build.sh: $name.comp does not compile" >&2
        exit 1
    fi
    if $check; then
        if ! cmp -s "$out/$name.spv" "$here/$name.spv"; then
            echo "build.sh: $name.spv differs from what $name.comp builds to; run $0" >&2
            status=1
        fi
    fi
done
if $check && [ "$status" -eq 0 ]; then
    echo "build.sh: the SPIR-V of $shaders is up to date"
fi
exit "$status"
