#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0 OR MIT
# Checks the kernel module's C sources with the kernel's checkpatch.pl --strict.
#
#   guest-driver/linux/checkpatch.sh [FILE...]
#
# Without arguments it checks every .c and .h under guest-driver/linux
# (include/uapi and tests/ too; Kbuild's generated *.mod.c excepted). It prints
# every ERROR, WARNING and CHECK and exits 1 if there is any.
#
# checkpatch.pl and the data files it reads (spelling.txt,
# const_structs.checkpatch, Documentation/dev-tools/checkpatch.rst), and the
# kernel's include/ (checkpatch --root reads the CamelCase names the kernel
# itself defines there, such as zlib_deflateInit2, so that calling them is not
# a finding), come from
# Debian's linux-source-6.12 package, extracted once into CHECKPATCH_DIR
# (default: ${ACCEL_VM_CACHE:-~/.cache/vhost-user-accel}/checkpatch-VERSION,
# VERSION being the package's). Fetching it needs apt (root, to update the
# package lists); if it cannot be had the script fails, it never skips.
#
# A ~/.checkpatch.conf would change what is checked: checkpatch runs with HOME
# pointing at an empty directory, so only these options apply.
set -euo pipefail

PACKAGE=linux-source-6.12
# Paths inside the package's tarball (under linux-source-6.12/).
NEEDED=(
    scripts/checkpatch.pl
    scripts/spelling.txt
    scripts/const_structs.checkpatch
    Documentation/dev-tools/checkpatch.rst
    include/linux/zlib.h
)
# Directories extracted whole, besides NEEDED.
TREES=(include)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() {
    echo "checkpatch.sh: $*" >&2
    exit 1
}

has_all_files() {
    local path
    for path in "${NEEDED[@]}"; do
        [[ -s $1/$path ]] || return 1
    done
}

# The version of $PACKAGE that apt would download; updates the package lists
# (and adds bookworm-backports) if apt knows none.
candidate_version() {
    local version
    version=$(apt-cache show --no-all-versions "$PACKAGE" 2>/dev/null | sed -n 's/^Version: //p')
    if [[ -z $version ]]; then
        echo "checkpatch.sh: apt knows no $PACKAGE; updating the package lists" >&2
        # shellcheck source=SCRIPTDIR/../../vmm-config/debian-backports.sh
        source "$repo/vmm-config/debian-backports.sh"
        ensure_backports
        apt-get update -qq >&2 || die "apt-get update failed"
        version=$(apt-cache show --no-all-versions "$PACKAGE" 2>/dev/null | sed -n 's/^Version: //p')
    fi
    [[ -n $version ]] || die "apt has no $PACKAGE package (Debian bookworm-security or bookworm-backports), so there is no checkpatch.pl"
    echo "$version"
}

# Extracts the files of NEEDED from $PACKAGE version $2 into directory $1.
fetch_checkpatch() {
    local dir=$1 version=$2 tmp
    echo "checkpatch.sh: fetching checkpatch.pl from $PACKAGE $version into $dir" >&2
    if ! command -v xz >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xz-utils >&2 ||
            die "xz is needed to unpack $PACKAGE and xz-utils cannot be installed"
    fi
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 # expand $tmp now
    trap "rm -rf '$tmp'" EXIT
    (cd "$tmp" && apt-get download -q "$PACKAGE=$version" >&2) ||
        die "apt-get download $PACKAGE=$version failed"
    mkdir "$tmp/tree"
    dpkg-deb --fsys-tarfile "$tmp"/"$PACKAGE"_*.deb |
        tar -xO "./usr/src/$PACKAGE.tar.xz" |
        tar -xJ -C "$tmp/tree" --strip-components=1 "${NEEDED[@]/#/$PACKAGE/}" \
            "${TREES[@]/#/$PACKAGE/}" ||
        die "cannot extract ${NEEDED[*]} from $PACKAGE $version"
    has_all_files "$tmp/tree" || die "$PACKAGE $version lacks one of ${NEEDED[*]}"
    mkdir -p "$(dirname "$dir")"
    rm -rf "$dir"
    mv "$tmp/tree" "$dir"
    rm -rf "$tmp"
    trap - EXIT
}

command -v perl >/dev/null || die "perl is not installed (checkpatch.pl is a perl script)"

# A plain assignment keeps candidate_version's status, so set -e stops here
# when it fails.
if [[ -n ${CHECKPATCH_DIR:-} ]]; then
    checkpatch_dir=$CHECKPATCH_DIR
    if ! has_all_files "$checkpatch_dir"; then
        version=$(candidate_version)
        fetch_checkpatch "$checkpatch_dir" "$version"
    fi
else
    version=$(candidate_version)
    checkpatch_dir=${ACCEL_VM_CACHE:-$HOME/.cache/vhost-user-accel}/checkpatch-$version
    has_all_files "$checkpatch_dir" || fetch_checkpatch "$checkpatch_dir" "$version"
fi

cd "$repo"
if (($# > 0)); then
    files=("$@")
else
    mapfile -t files < <(find guest-driver/linux -type f \( -name '*.c' -o -name '*.h' \) \
        ! -name '*.mod.c' | LC_ALL=C sort)
fi
((${#files[@]} > 0)) || die "no .c or .h files under guest-driver/linux"

empty_home=$(mktemp -d)
trap 'rm -rf "$empty_home"' EXIT
failed=0
for file in "${files[@]}"; do
    [[ -f $file ]] || die "no file $file"
    status=0
    # Run from the empty folder: in a git tree checkpatch leaves a
    # .checkpatch-camelcase.git.* cache file in its working directory.
    report=$(cd "$empty_home" && HOME=$empty_home perl "$checkpatch_dir/scripts/checkpatch.pl" \
        --strict --no-tree --root="$checkpatch_dir" --show-types --color=never --quiet -f "$repo/$file" 2>&1) || status=$?
    findings=$(grep -cE '^(ERROR|WARNING|CHECK):' <<<"$report" || true)
    if ((status != 0 || findings > 0)); then
        echo "== $file: $findings finding(s)"
        echo "$report"
        failed=$((failed + 1))
    else
        echo "ok $file"
    fi
done
if ((failed > 0)); then
    echo "checkpatch --strict: $failed of ${#files[@]} file(s) have findings" >&2
    exit 1
fi
echo "checkpatch --strict: ${#files[@]} file(s) clean"
