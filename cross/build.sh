#!/usr/bin/env bash
# Build release `causeway` binaries for ARM boards here, from the package registries alone, and
# prove each one runs under qemu-user.
#
#   cross/build.sh [--no-smoke] TARGET...     TARGET: aarch64 | armv7 | aarch64-glibc2.28 | armv7-glibc2.28 | all
#
# Binaries land in dist/causeway-<rust target>[-glibc2.28]. The road (see cross/README.md):
# Debian's Rust (rustc-web, cargo-web) with Debian's prebuilt ARM standard library, the gcc
# cross linkers, and qemu-user to run the results. The glibc-2.28 builds link with zig through
# cargo-zigbuild, for boards on Debian 10/11 or Ubuntu 20.04. Needs root for apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIST="$ROOT/dist"
WORK="$ROOT/target/cross"
SMOKE=1
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --no-smoke) SMOKE=0 ;;
        all) TARGETS+=(aarch64 armv7 aarch64-glibc2.28 armv7-glibc2.28) ;;
        aarch64 | armv7 | aarch64-glibc2.28 | armv7-glibc2.28) TARGETS+=("$arg") ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "cross/build.sh: unknown target '$arg' (aarch64, armv7, aarch64-glibc2.28, armv7-glibc2.28, all)" >&2; exit 2 ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || { echo "usage: cross/build.sh [--no-smoke] TARGET... (see --help)" >&2; exit 2; }
mkdir -p "$DIST" "$WORK"

log() { printf '== %s\n' "$*"; }

APT_UPDATED=0
apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The rust target triple, Debian architecture and gcc prefix of a TARGET.
rust_target() { case "$1" in aarch64*) echo aarch64-unknown-linux-gnu ;; armv7*) echo armv7-unknown-linux-gnueabihf ;; esac; }
deb_arch() { case "$1" in aarch64*) echo arm64 ;; armv7*) echo armhf ;; esac; }
gnu_prefix() { case "$1" in aarch64*) echo aarch64-linux-gnu ;; armv7*) echo arm-linux-gnueabihf ;; esac; }
qemu_for() { case "$1" in aarch64*) echo qemu-aarch64 ;; armv7*) echo qemu-arm ;; esac; }

# The archive URIs this machine's apt already uses (deb822 and one-line formats): no host is
# written into this script.
apt_uris() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\]//' | awk '{print $2}'
    } | grep -E '^https?://' | sort -u
}

# Debian's prebuilt standard library for ARCH, exactly the installed compiler's version, copied
# into Debian's rustc sysroot. Read from the suites' Packages indexes and checked by SHA256, so
# no foreign architecture is added to dpkg and no apt list is touched.
install_std() {
    local arch="$1" triple="$2"
    local sysroot version
    sysroot="$(/usr/bin/rustc --print sysroot)"
    if [ -d "$sysroot/lib/rustlib/$triple/lib" ]; then return 0; fi
    version="$(dpkg-query -W -f='${Version}' rustc-web)"
    log "fetching libstd-rust-web-dev:$arch $version"
    local codename
    codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"
    local found=""
    for uri in $(apt_uris); do
        for suite in "$codename-security" "$codename-updates" "$codename"; do
            local index="$WORK/Packages-$arch-$(echo "$uri$suite" | md5sum | cut -c1-8)"
            if [ ! -s "$index" ]; then
                curl -fsSL "$uri/dists/$suite/main/binary-$arch/Packages.xz" 2>/dev/null | xz -dc > "$index" 2>/dev/null || { rm -f "$index"; continue; }
            fi
            local stanza
            stanza="$(awk -v RS='' -v v="$version" 'index("\n" $0 "\n", "\nPackage: libstd-rust-web-dev\n") && index("\n" $0 "\n", "\nVersion: " v "\n") {print; exit}' "$index")"
            [ -n "$stanza" ] || continue
            local file sha
            file="$(printf '%s\n' "$stanza" | awk '/^Filename:/ {print $2}')"
            sha="$(printf '%s\n' "$stanza" | awk '/^SHA256:/ {print $2}')"
            curl -fsSL -o "$WORK/std-$arch.deb" "$uri/$file"
            echo "$sha  $WORK/std-$arch.deb" | sha256sum -c --quiet
            found=1
            break 2
        done
    done
    [ -n "$found" ] || { echo "libstd-rust-web-dev:$arch $version is in none of the archives apt uses" >&2; exit 1; }
    rm -rf "$WORK/std-$arch"
    dpkg-deb -x "$WORK/std-$arch.deb" "$WORK/std-$arch"
    cp -r "$WORK/std-$arch/usr/lib/rustlib/$triple" "$sysroot/lib/rustlib/"
}

setup_zig() {
    if [ ! -x "$WORK/venv/bin/python" ]; then
        python3 -m venv "$WORK/venv"
    fi
    "$WORK/venv/bin/pip" install -q ziglang
    if ! command -v cargo-zigbuild >/dev/null 2>&1 && [ ! -x "$WORK/bin/cargo-zigbuild" ]; then
        log "installing cargo-zigbuild"
        cargo install --locked --quiet --root "$WORK" cargo-zigbuild
    fi
    export PATH="$WORK/bin:$PATH"
    # The zig binary inside the `ziglang` wheel; named outright, since the build puts Debian's
    # /usr/bin (and its python3, without ziglang) first in PATH.
    CARGO_ZIGBUILD_ZIG_PATH="$("$WORK/venv/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
    export CARGO_ZIGBUILD_ZIG_PATH
}

build() {
    local target="$1" triple arch prefix
    triple="$(rust_target "$target")"
    arch="$(deb_arch "$target")"
    prefix="$(gnu_prefix "$target")"
    apt_install rustc-web cargo-web "gcc-$prefix" "libc6-dev-$arch-cross" qemu-user
    install_std "$arch" "$triple"
    local upper="${triple^^}"
    upper="${upper//-/_}"
    local started=$SECONDS out
    # One target folder per linker road, so the two roads of a triple do not rebuild each other.
    local target_dir="$ROOT/target/cross-build"
    case "$target" in *-glibc2.28) target_dir="$ROOT/target/cross-build-glibc2.28" ;; esac
    (
        # Debian's compiler first: its ARM std matches it exactly.
        export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$target_dir"
        cd "$ROOT"
        case "$target" in
            *-glibc2.28)
                # zig links against glibc 2.28; the gcc linker variables would undo the pin.
                /usr/bin/cargo zigbuild --release --locked -p gateway --target "$triple.2.28"
                ;;
            *)
                export "CARGO_TARGET_${upper}_LINKER=$prefix-gcc" "CC_${triple//-/_}=$prefix-gcc" "AR_${triple//-/_}=$prefix-ar"
                /usr/bin/cargo build --release --locked -p gateway --target "$triple"
                ;;
        esac
    )
    case "$target" in
        *-glibc2.28) out="$DIST/causeway-$triple-glibc2.28" ;;
        *) out="$DIST/causeway-$triple" ;;
    esac
    cp "$target_dir/$triple/release/causeway" "$out"
    log "$(basename "$out"): $(stat -c %s "$out") bytes, built in $((SECONDS - started)) s"
}

smoke() {
    local target="$1" bin qemu prefix
    case "$target" in
        *-glibc2.28) bin="$DIST/causeway-$(rust_target "$target")-glibc2.28" ;;
        *) bin="$DIST/causeway-$(rust_target "$target")" ;;
    esac
    qemu="$(qemu_for "$target")"
    prefix="$(gnu_prefix "$target")"
    local run=("$qemu" -L "/usr/$prefix" "$bin")
    log "smoke test $(basename "$bin") under $qemu"
    # The newest glibc symbol the binary needs decides which boards it runs on.
    local needs
    needs="$("$prefix-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
    echo "needs $needs"
    case "$target" in
        *-glibc2.28)
            if [ "$(printf '%s\n' "${needs#GLIBC_}" 2.28 | sort -V | tail -n 1)" != 2.28 ]; then
                echo "$(basename "$bin") needs $needs, newer than the promised 2.28" >&2
                exit 1
            fi
            ;;
    esac
    "${run[@]}" --version
    for example in "$ROOT"/docs/examples/*.toml; do
        "${run[@]}" check -c "$example"
    done
    local summary
    summary="$("${run[@]}" demo --for 10s | tee "$WORK/demo-$target.log" | tail -n 1)"
    echo "$summary"
    case "$summary" in
        "demo: delivered "*", lost 0") ;;
        *) echo "$(basename "$bin"): the demo did not end with 'lost 0' (log: $WORK/demo-$target.log)" >&2; exit 1 ;;
    esac
}

for target in "${TARGETS[@]}"; do
    case "$target" in *-glibc2.28) setup_zig ;; esac
    build "$target"
done
if [ "$SMOKE" = 1 ]; then
    for target in "${TARGETS[@]}"; do smoke "$target"; done
fi
log "done: $(cd "$DIST" && ls causeway-* | tr '\n' ' ')"
