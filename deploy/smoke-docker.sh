#!/usr/bin/env bash
# Build and run the image where a Docker engine exists: fit a demo model, serve it, inspect once.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-cpu}
docker build --target "$TARGET" -t sae-inspect:smoke .
tmp=$(mktemp -d)
docker run --rm -v "$tmp:/work" --entrypoint sh sae-inspect:smoke -c \
  "sae-inspect demo-data /work/data --n-train 60 && sae-inspect fit /work/data --out /work/parts.safetensors --steps 200"
cid=$(docker run -d -p 18000:8000 -v "$tmp:/models:ro" sae-inspect:smoke)
trap 'docker rm -f $cid >/dev/null' EXIT
for _ in $(seq 60); do curl -fs localhost:18000/readyz && break; sleep 2; done
curl -fs -F "file=@$(ls "$tmp"/data/test/spot/*.png | head -1)" localhost:18000/v1/models/parts/inspect
echo; docker inspect --format '{{.State.Health.Status}}' "$cid"
