"""Hostile and broken inputs against a real server process: documented 4xx, no leak, still serving."""

import json
from pathlib import Path

import httpx
import pytest

from bench.hostile import build_corpus, exif_rotated_png, send
from bench.images import part_png
from bench.servers import rss_bytes, server_process

MAX_BODY = 4 * 2**20
GOOD = part_png(12)
REPORT = Path(__file__).resolve().parents[2] / "test-artifacts"


def test_hostile_corpus(models_dir):
    corpus = build_corpus(MAX_BODY)
    assert len(corpus) >= 40
    env = {"SAE_INSPECT_MAX_BODY_BYTES": str(MAX_BODY), "SAE_INSPECT_BODY_TIMEOUT_S": "2",
           "SAE_INSPECT_API_KEY": "correct-horse-battery"}
    rows, failures = [], []
    with server_process(models_dir, **env) as (url, proc):
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(3):
                assert c.post("/v1/models/parts/inspect", content=GOOD,
                              headers={"content-type": "image/png"}).status_code == 200
            baseline = rss_bytes(proc.pid)
            for case in corpus:
                status, body, _ = send(url, case)
                ok = status in case.expected
                if case.raw is None and status != 200:
                    parsed = json.loads(body)
                    ok &= bool(parsed.get("error")) and bool(parsed.get("detail"))
                ok &= "Traceback" not in body and str(models_dir) not in body
                after = c.post("/v1/models/parts/inspect", content=GOOD, headers={"content-type": "image/png"})
                ok &= after.status_code == 200
                rows.append(f"| {case.name} | {sorted(case.expected)} | {status} | {'ok' if ok else 'FAIL'} |")
                if not ok:
                    failures.append((case.name, status, body[:300]))
            grown = rss_bytes(proc.pid) - baseline
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    REPORT.mkdir(exist_ok=True)
    (REPORT / "hostile_inputs.md").write_text(
        "| case | expected | got | verdict |\n|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\nRSS growth over the corpus: {grown / 2**20:.1f} MiB\n")
    print("\n".join(rows))
    print(f"RSS growth over the corpus: {grown / 2**20:.1f} MiB")
    assert not failures, failures
    assert grown < 150 * 2**20, f"memory grew by {grown / 2**20:.0f} MiB"
    assert "correct-horse-battery" not in log


def test_exif_rotated_image_is_scored_upright(client):
    upright, rotated = exif_rotated_png()
    a = client.post("/v1/models/parts/inspect", content=upright, headers={"content-type": "image/png"}).json()
    b = client.post("/v1/models/parts/inspect", content=rotated, headers={"content-type": "image/png"}).json()
    assert (b["image_width"], b["image_height"]) == (a["image_width"], a["image_height"]) == (200, 120)
    assert b["score"] == pytest.approx(a["score"], rel=1e-6)


def test_path_traversal_file_name_is_reduced_to_its_base_name(client):
    r = client.post("/v1/models/parts/inspect", files={"file": ("../../etc/passwd", GOOD, "image/png")})
    assert r.status_code == 200 and r.json()["filename"] == "passwd"
