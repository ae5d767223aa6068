#!/usr/bin/env bash
# Developer entry point: README's two set-up commands are
#   bash packaging/dev.sh demo    # local test cluster + real sshd node + the tsh flow
#   bash packaging/dev.sh test    # the whole test suite (what CI runs)
# Both install what they need first: Debian packages (when run as root and
# missing) and a virtual environment in .venv with the project and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(openssh-client openssh-server gnupg gnome-keyring dbus tmux chromium chromium-driver)

install_system_packages() {
    local missing=()
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "dev.sh: please install: ${missing[*]}" >&2
        return 0
    fi
    echo "dev.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

make_venv() {
    local py=${PYTHON:-python3}
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    # Bytecode for the checkout, as pip writes it for installed packages: the
    # tests start hundreds of tsh and cluster processes, and where
    # PYTHONDONTWRITEBYTECODE is set each would compile every module again.
    .venv/bin/python -m compileall -q -j 0 tsh tests benchmarks >/dev/null
}

case "${1:-}" in
    test)
        shift
        install_system_packages
        make_venv
        .venv/bin/ruff check tsh tests benchmarks packaging
        .venv/bin/mypy --strict tsh
        # Whole modules per worker (--dist loadfile): their clusters and nodes
        # are module fixtures. At most 4 workers: the suite's busiest tests run
        # a hundred ssh at once.
        exec .venv/bin/python -m pytest --numprocesses=auto --maxprocesses=4 --dist=loadfile "$@"
        ;;
    demo)
        shift
        install_system_packages
        make_venv
        exec .venv/bin/python -m tests.cluster demo "$@"
        ;;
    *)
        echo "usage: bash packaging/dev.sh demo|test [args]" >&2
        exit 2
        ;;
esac
