# Sourced by the set-up scripts: one virtual environment at the repository root.
PYTHON="${PYTHON:-python3}"

install_project() {
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first and pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e "$1"
}
