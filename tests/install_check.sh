#!/usr/bin/env bash
# tests/install_check.sh BUILDDIR SRCDIR - can a program outside the tree use an installed
# memvirt the way the README says?
#
# Installs BUILDDIR into a temporary staging root (meson install --destdir, nothing
# rebuilt), points pkg-config at the staged memvirt.pc (PKG_CONFIG_SYSROOT_DIR maps the
# .pc file's prefix into the staging root), then checks:
#   - every public header is installed, nothing else is, and each one compiles on its own
#     as C and as C++; memvirt.h brings in all of them;
#   - tests/consumer/consumer.c builds and runs as C against the shared library
#     (`pkg-config --cflags --libs memvirt`, loaded from the staging root), as C against
#     the static archive (`pkg-config --static`, no libmemvirt.so needed at run time), and
#     as C++ against the shared library (links only with extern "C" guards).
# Exit 0 when all passed, 77 (skip) for a sanitized build (an unsanitized program cannot
# load it), 1 with a message on the first failure. Registered by tests/meson.build.
set -euo pipefail

say() { printf 'install_check: %s\n' "$*"; }
fail() { printf 'install_check: FAIL: %s\n' "$*" >&2; exit 1; }
skip() { printf 'install_check: SKIP: %s\n' "$*"; exit 77; }

[ $# -eq 2 ] || { echo "usage: $0 BUILDDIR SRCDIR" >&2; exit 2; }
builddir=$(cd "$1" && pwd)
srcdir=$(cd "$2" && pwd)
CC=${CC:-cc}
CXX=${CXX:-c++}
for tool in pkg-config readelf "$CC" "$CXX"; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/memvirt-install-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root

# ---- Install into the staging root ----------------------------------------------------
if ! meson install -C "$builddir" --destdir "$root" --no-rebuild >"$tmp/install.log" 2>&1; then
    cat "$tmp/install.log" >&2
    fail "meson install into a staging root failed"
fi

mapfile -t pcs < <(find "$root" -name memvirt.pc -path '*/pkgconfig/*')
[ ${#pcs[@]} -eq 1 ] || fail "expected one installed memvirt.pc, found ${#pcs[@]}"
pcdir=$(dirname "${pcs[0]}")
libdir=$(dirname "$pcdir")
say "memvirt.pc installed in ${pcdir#"$root"}"

for f in libmemvirt.so libmemvirt.a; do
    [ -e "$libdir/$f" ] || fail "$f is not installed in ${libdir#"$root"}"
done
if readelf -d "$libdir/libmemvirt.so" | grep -Eq 'NEEDED.*lib(a|ub|t|l|hwa)san'; then
    skip "the library is built with a sanitizer; run this check in a plain build"
fi
soname=$(readelf -d "$libdir/libmemvirt.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ -z "$soname" ] || [ ! -e "$libdir/$soname" ]; then
    fail "the soname link '$soname' is not installed"
fi

export PKG_CONFIG_PATH=$pcdir
export PKG_CONFIG_SYSROOT_DIR=$root
pkg-config --exists memvirt || fail "pkg-config cannot read the installed memvirt.pc: $(pkg-config --print-errors --exists memvirt 2>&1)"
say "pkg-config: memvirt $(pkg-config --modversion memvirt)"
cflags=$(pkg-config --cflags memvirt)
libs=$(pkg-config --libs memvirt)
static_libs=$(pkg-config --static --libs memvirt)

# ---- Headers --------------------------------------------------------------------------
incdir=$(find "$root" -type d -path '*/include/memvirt' | head -n 1)
[ -n "$incdir" ] || fail "no include/memvirt directory was installed"
expected=$(
    shopt -s nullglob
    cd "$srcdir/include/memvirt"
    for f in *.h *.h.in; do echo "${f%.in}"; done | sort -u
)
installed=$(find "$incdir" -mindepth 1 -printf '%f\n' | sort)
[ "$expected" = "$installed" ] ||
    fail "installed headers differ from include/memvirt: $(diff <(echo "$expected") <(echo "$installed") | grep '^[<>]' | tr '\n' ' ')"
for h in $installed; do
    printf '#include <memvirt/%s>\nint mv_check_header_alone;\n' "$h" >"$tmp/alone.c"
    # shellcheck disable=SC2086 # flags are words
    "$CC" -std=c11 -Wall -Wextra -Wpedantic -Werror $cflags -c "$tmp/alone.c" -o "$tmp/alone.o" ||
        fail "memvirt/$h does not compile on its own as C11"
    # shellcheck disable=SC2086
    "$CXX" -x c++ -std=c++11 -Wall -Wextra -Wpedantic -Werror $cflags -c "$tmp/alone.c" -o "$tmp/alone.o" ||
        fail "memvirt/$h does not compile on its own as C++11"
done
printf '#include <memvirt/memvirt.h>\n' >"$tmp/umbrella.c"
# shellcheck disable=SC2086
"$CC" -std=c11 $cflags -M "$tmp/umbrella.c" >"$tmp/umbrella.d"
for h in $installed; do
    grep -q "memvirt/$h" "$tmp/umbrella.d" || fail "memvirt/memvirt.h does not include memvirt/$h"
done
say "headers: $(tr '\n' ' ' <<<"$installed")- installed, self-contained in C and C++, all in memvirt.h"

# ---- The consumer ---------------------------------------------------------------------
consumer=$srcdir/tests/consumer/consumer.c
warn=(-Wall -Wextra -Wpedantic -Werror)

# Shared library, as C.
# shellcheck disable=SC2086
"$CC" -std=c11 "${warn[@]}" $cflags "$consumer" -o "$tmp/consumer-shared" $libs ||
    fail "the consumer does not link with \`pkg-config --cflags --libs memvirt\`"
readelf -d "$tmp/consumer-shared" | grep -q "NEEDED.*\[$soname\]" ||
    fail "the shared consumer does not need $soname"
loaded=$(LD_LIBRARY_PATH=$libdir ldd "$tmp/consumer-shared" | awk -v s="$soname" '$1 == s {print $3}')
[ "$loaded" = "$libdir/$soname" ] ||
    fail "the shared consumer would load $soname from '$loaded', not from the staging root"
say "run: C, shared library"
LD_LIBRARY_PATH=$libdir "$tmp/consumer-shared" || fail "the shared consumer failed"

# Static archive, as C: memvirt itself from libmemvirt.a, its private dependencies as pkg-config
# --static lists them (shared where the system has them shared).
static_libs=$(printf '%s\n' "$static_libs" | sed -E 's/(^|[[:space:]])-lmemvirt([[:space:]]|$)/\1-l:libmemvirt.a\2/')
# shellcheck disable=SC2086
"$CC" -std=c11 "${warn[@]}" $cflags "$consumer" -o "$tmp/consumer-static" $static_libs ||
    fail "the consumer does not link with \`pkg-config --static --cflags --libs memvirt\`"
if readelf -d "$tmp/consumer-static" | grep -q 'NEEDED.*libmemvirt'; then
    fail "the static consumer still needs libmemvirt.so"
fi
say "run: C, static library"
"$tmp/consumer-static" || fail "the static consumer failed"

# Shared library, as C++: mangled names would not link without the extern "C" guards.
# shellcheck disable=SC2086
"$CXX" -x c++ -std=c++11 "${warn[@]}" $cflags "$consumer" -x none -o "$tmp/consumer-cxx" $libs ||
    fail "the consumer does not build as C++ (extern \"C\" guards?)"
say "run: C++, shared library"
LD_LIBRARY_PATH=$libdir "$tmp/consumer-cxx" || fail "the C++ consumer failed"

say "OK: installed headers, pkg-config file, shared and static library work out of tree (C and C++)"
