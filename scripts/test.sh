#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up .venv, lint, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m ruff check models training service tests bench scripts
.venv/bin/python -m pytest -q "$@"
