"""Send the demo's test images to a running service and print one verdict per image."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    sys.exit(f"service at {url} did not become ready within {timeout_s:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="parts")
    p.add_argument("--images", type=Path, required=True, help="folder with <kind>/<image> files")
    a = p.parse_args()
    wait_ready(a.url)
    correct = total = 0
    for img in sorted(a.images.rglob("*.png")):
        req = urllib.request.Request(f"{a.url}/v1/models/{a.model}/inspect", data=img.read_bytes(),
                                     headers={"content-type": "image/png"}, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.load(r)
        truth = "good" if img.parent.name == "good" else "anomalous"
        correct += body["verdict"] == truth
        total += 1
        print(f"{img.parent.name:>8}/{img.name}  score={body['score']:.3f}  threshold={body['threshold']:.3f}  "
              f"p={body['p_value']:.3f}  -> {body['verdict']:<9} regions={len(body['regions'])}  "
              f"{body['timings']['total_ms']:.0f} ms")
    print(f"{correct}/{total} verdicts match the ground truth")
    print(f"metrics: {a.url}/metrics   model card: {a.url}/v1/models/{a.model}   API docs: {a.url}/docs")


if __name__ == "__main__":
    main()
