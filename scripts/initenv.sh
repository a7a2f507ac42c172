#!/bin/bash
# Create ./venv (idempotent) with editable installs of chatmaild and cmdeploy.
set -e
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    scripts/apt-install.sh scripts/venv-packages.txt
fi
if [ ! -x venv/bin/python ]; then
    "$PYTHON" -m venv venv
fi
stamp=venv/.installed
if [ ! -f "$stamp" ] || [ chatmaild/pyproject.toml -nt "$stamp" ] || [ cmdeploy/pyproject.toml -nt "$stamp" ]; then
    # The machine's pip config names local indexes that may be absent; hide that noise only.
    venv/bin/pip install -q -e 'chatmaild[test]' -e 'cmdeploy[test,dev]' 2> >(grep -v 'is ignored: it is \(n\)\?either' >&2)
    touch "$stamp"
fi
