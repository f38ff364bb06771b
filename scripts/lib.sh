# shellcheck shell=bash
# scripts/lib.sh: helpers shared by scripts/test and scripts/demo (sourced, not run).
# Installs only what is missing, so a second run touches nothing and needs no network.

# Debian packages the build, the tests and the demo need.
RS_PACKAGES=(iproute2 iputils-ping clang libelf-dev zlib1g-dev pkg-config libslirp-dev build-essential python3-venv qemu-system-x86 iperf3 ethtool busybox-static linux-image-amd64 vde2 vdeplug)

rs_log() { printf '==> %s\n' "$*"; }
rs_warn() { printf 'warning: %s\n' "$*" >&2; }
rs_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

rs_require_root() {
    [[ $(id -u) -eq 0 ]] || rs_die "run as root: the tests and the demo create taps and network namespaces"
}

# rs_ensure_packages PKG...: installs the packages that are not installed yet; runs
# `apt-get update` once, and only when something is missing.
rs_ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        rs_log "system packages: all present"
        return 0
    fi
    command -v apt-get >/dev/null || rs_die "missing packages (${missing[*]}) and no apt-get to install them"
    rs_log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local log
    log=$(mktemp)
    # apt's chatter is shown only when it fails.
    if ! timeout 300 apt-get -qq update </dev/null >"$log" 2>&1 ||
        ! timeout 900 apt-get -qq -y install --no-install-recommends "${missing[@]}" </dev/null >>"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        rs_die "could not install ${missing[*]}"
    fi
    rm -f "$log"
}

# rs_ensure_rust: cargo (with rustfmt and clippy) on PATH. Rust itself is not packaged
# recently enough in Debian 12 (the workspace needs 1.85), so it must come from rustup.
rs_ensure_rust() {
    if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
        # shellcheck source=/dev/null
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null ||
        rs_die "cargo not found: install a Rust toolchain >= 1.85 with rustup, then run again"
    local comp
    for comp in fmt clippy; do
        if ! cargo "$comp" --version >/dev/null 2>&1; then
            command -v rustup >/dev/null || rs_die "cargo $comp is missing and there is no rustup to add it"
            rs_log "adding toolchain component for cargo $comp"
            local name=rustfmt
            [[ $comp == clippy ]] && name=clippy
            timeout 300 rustup component add "$name" </dev/null >/dev/null ||
                rs_die "rustup component add $name failed"
        fi
    done
    rs_log "toolchain: $(cargo --version)"
}

rs_ensure_deps() {
    rs_ensure_packages "${RS_PACKAGES[@]}"
    rs_ensure_rust
}

# cargo-fuzz, for the fuzz smoke test of scripts/test (fuzz/README.md). Pinned: 0.13.2 builds
# on Rust 1.95 stable with --locked (the dependency versions it was released with).
RS_CARGO_FUZZ_VERSION=0.13.2

# rs_ensure_cargo_fuzz: installs cargo-fuzz with `cargo install` unless `cargo fuzz` works
# already (whatever its version: a developer's own is left alone). Returns non-zero, with the
# install log, when it cannot be had.
rs_ensure_cargo_fuzz() {
    local have
    if have=$(cargo fuzz --version 2>/dev/null); then
        [[ $have == "cargo-fuzz $RS_CARGO_FUZZ_VERSION" ]] ||
            rs_warn "using the installed $have (scripts/lib.sh pins $RS_CARGO_FUZZ_VERSION)"
        rs_log "cargo-fuzz: present (${have#cargo-fuzz })"
        return 0
    fi
    rs_log "installing cargo-fuzz $RS_CARGO_FUZZ_VERSION (cargo install --locked)"
    local log
    log=$(mktemp)
    if ! timeout 900 cargo install cargo-fuzz --version "=$RS_CARGO_FUZZ_VERSION" --locked \
        </dev/null >"$log" 2>&1 || ! cargo fuzz --version >/dev/null 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        rs_warn "could not install cargo-fuzz $RS_CARGO_FUZZ_VERSION"
        return 1
    fi
    rm -f "$log"
}

# rs_fuzz_smoke SECONDS: from the repository root, builds the cargo-fuzz targets of fuzz/
# (release with debug assertions, AddressSanitizer; stable Rust with RUSTC_BOOTSTRAP=1, as
# fuzz/README.md says) and runs each for SECONDS in an empty network namespace (`unshare -n`:
# the -netdev parser resolves the host names the fuzzer invents). Fails on a build error, a
# crash, a leak or an input that takes over 10 s; the input is left in fuzz/artifacts/TARGET/.
# The corpus grows in fuzz/corpus/ (not committed); the fuzzers' output is in target/fuzz-smoke/.
rs_fuzz_smoke() (
    local secs=${1:-20} logs=$PWD/target/fuzz-smoke failed=0 t
    command -v cargo-fuzz >/dev/null || {
        rs_warn "cargo-fuzz is not installed (rs_ensure_cargo_fuzz)"
        exit 1
    }
    mkdir -p "$logs"
    cd fuzz || exit 1
    export RUSTC_BOOTSTRAP=1
    if ! cargo fuzz build -O -a >"$logs/build.log" 2>&1; then
        tail -n 40 "$logs/build.log" >&2
        rs_warn "cargo fuzz build failed (log: $logs/build.log)"
        exit 1
    fi
    local targets
    targets=$(cargo fuzz list) || exit 1
    if [[ -z $targets ]]; then
        rs_warn "cargo fuzz list found no target"
        exit 1
    fi
    for t in $targets; do
        local extra=()
        [[ $t == parse_netdev ]] && extra=("-dict=$PWD/dicts/netdev.dict")
        # Built above: the run needs no network, and has none.
        if CARGO_NET_OFFLINE=true unshare -n cargo fuzz run -O -a "$t" -- \
            -max_total_time="$secs" -timeout=10 "${extra[@]}" >"$logs/$t.log" 2>&1; then
            printf '    %-14s %s\n' "$t" "$(grep -a 'DONE' "$logs/$t.log" | tail -n 1 | tr -s ' \t' ' ')"
        else
            # What failed and where the input is; the whole story is in the log.
            {
                grep -a -E -A2 'panicked at|==[0-9]+== ?ERROR' "$logs/$t.log" | head -n 12
                grep -a -E '^SUMMARY|Test unit written|^Error' "$logs/$t.log"
            } >&2
            rs_warn "fuzz target $t failed (log: $logs/$t.log; input: fuzz/artifacts/$t/)"
            failed=1
        fi
    done
    exit "$failed"
)
