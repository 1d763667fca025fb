#!/usr/bin/env bash
# The main job, end to end on a fresh machine: generate demo parts, fit + calibrate a model,
# evaluate it, start the inspection service, send good and defective parts, print verdicts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=${DEMO_OUT:-demo_out}
PORT=${PORT:-8000}
rm -rf "$OUT" && mkdir -p "$OUT/models"
sae-inspect demo-data "$OUT/data" --n-train 120 --n-test 12
sae-inspect fit "$OUT/data" --out "$OUT/models/parts.safetensors" --steps 800 --alpha 0.05
sae-inspect evaluate "$OUT/models/parts.safetensors" "$OUT/data" --out "$OUT/eval"
sae-inspect-serve --models-dir "$OUT/models" --port "$PORT" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
python scripts/demo_client.py --url "http://127.0.0.1:$PORT" --model parts --images "$OUT/data/test"
echo "evaluation report: $OUT/eval/report.png   server log: $OUT/server.log"
