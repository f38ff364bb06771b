# shellcheck shell=bash
# scripts/lib.sh: helpers shared by scripts/test and scripts/demo (sourced, not run).
# Installs only what is missing, so a second run touches nothing and needs no network.

# Debian packages the build, the tests and the demo need.
RS_PACKAGES=(iproute2 iputils-ping clang libelf-dev zlib1g-dev pkg-config build-essential python3-venv qemu-system-x86)

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
