"""Operator feedback: kept uploads in a bounded ring, filed as good or defect by image id."""

import json
import time

import pytest

from bench.images import part_png
from bench.servers import wait_until
from service.feedback import FeedbackStore, NotKept
from tests.service.test_api import BAD, GOOD, metric

HDR = {"content-type": "image/png"}
OP = {"authorization": "Bearer op-key"}


def _wait_kept(fb, model, image_id):
    wait_until(lambda: (fb / ".ring" / model / f"{image_id}.json").exists(), 10)


def test_false_alarm_and_confirmed_defect_are_filed_with_their_record(make_client, tmp_path):
    fb = tmp_path / "feedback"
    with make_client(feedback_dir=fb, operator_key="op-key", api_key="admin-key") as c:
        good = c.post("/v1/models/parts/inspect", content=GOOD, headers=HDR).json()
        bad = c.post("/v1/models/parts/inspect", content=BAD, headers=HDR).json()
        assert good["image_id"] == good["request_id"] and bad["verdict"] == "anomalous"
        for r in (good, bad):
            _wait_kept(fb, "parts", r["image_id"])
        out = c.post("/v1/models/parts/feedback", json={"image_id": bad["image_id"], "label": "defect",
                                                        "box": [10, 20, 30, 40]}, headers=OP)
        assert out.status_code == 200, out.text
        assert out.json()["file"] == f"parts/defect/{bad['image_id']}.png"
        assert (fb / "parts" / "defect" / f"{bad['image_id']}.png").read_bytes() == BAD
        side = json.loads((fb / "parts" / "defect" / f"{bad['image_id']}.json").read_text())
        assert side["verdict"] == "anomalous" and side["label"] == "defect" and side["box"] == [10, 20, 30, 40]
        assert side["score"] == pytest.approx(bad["score"]) and side["model_version"] == bad["model_version"]
        # the admin key works too; a good verdict may be labelled good (training data)
        assert c.post("/v1/models/parts/feedback", json={"image_id": good["image_id"], "label": "good"},
                      headers={"authorization": "Bearer admin-key"}).status_code == 200
        assert (fb / "parts" / "good" / f"{good['image_id']}.png").exists()
        assert not (fb / ".ring" / "parts" / f"{good['image_id']}.png").exists()  # moved, not copied
        assert metric(c, "sae_inspect_feedback_total", model="parts", label="defect", verdict="anomalous") == 1
        assert metric(c, "sae_inspect_feedback_total", model="parts", label="good", verdict="good") == 1
        assert metric(c, "sae_inspect_feedback_ring_writes_total", outcome="kept") == 2
        # filed once: the same id again, an unknown id, a malformed id -> 404 with a clear message
        again = c.post("/v1/models/parts/feedback", json={"image_id": bad["image_id"], "label": "good"}, headers=OP)
        assert again.status_code == 404 and "filed already" in again.json()["detail"]
        for image_id in ("0" * 32, "../../etc/passwd"):
            r = c.post("/v1/models/parts/feedback", json={"image_id": image_id, "label": "good"}, headers=OP)
            assert r.status_code == 404 and r.json()["error"] == "not_found"
        # bad label, bad box, no key, wrong key
        assert c.post("/v1/models/parts/feedback", json={"image_id": good["image_id"], "label": "meh"},
                      headers=OP).status_code == 422
        assert c.post("/v1/models/parts/feedback", json={"image_id": good["image_id"], "label": "good",
                                                         "box": [1, 2]}, headers=OP).status_code == 422
        assert c.post("/v1/models/parts/feedback", json={"image_id": good["image_id"], "label": "good"}
                      ).status_code == 401
        assert c.post("/v1/models/parts/feedback", json={"image_id": good["image_id"], "label": "good"},
                      headers={"authorization": "Bearer nope"}).status_code == 401


def test_batch_images_get_their_own_ids(make_client, tmp_path):
    fb = tmp_path / "feedback"
    with make_client(feedback_dir=fb, operator_key="op-key") as c:
        files = [("files", (f"p{i}.png", part_png(200 + i), "image/png")) for i in range(2)]
        res = c.post("/v1/models/parts/inspect/batch", files=files).json()
        ids = [r["image_id"] for r in res["results"]]
        assert ids == [f"{res['request_id']}.0", f"{res['request_id']}.1"]
        _wait_kept(fb, "parts", ids[1])
        r = c.post("/v1/models/parts/feedback", json={"image_id": ids[1], "label": "good"}, headers=OP)
        assert r.status_code == 200 and r.json()["file"] == f"parts/good/{ids[1]}.png"


def test_feedback_is_off_unless_configured(make_client):
    with make_client(api_key="k") as c:
        rid = c.post("/v1/models/parts/inspect", content=GOOD, headers=HDR).json()["image_id"]
        r = c.post("/v1/models/parts/feedback", json={"image_id": rid, "label": "good"},
                   headers={"authorization": "Bearer k"})
        assert r.status_code == 403 and "SAE_INSPECT_FEEDBACK_DIR" in r.json()["detail"]


def test_ring_is_bounded_by_size_and_age_and_survives_a_restart(tmp_path):
    outcomes = []
    store = FeedbackStore(tmp_path, max_bytes=2500, max_age_s=3600, on_write=outcomes.append)
    for i in range(5):
        store.keep("m", f"{i:032x}", b"\x89PNG" + bytes(1000), {"verdict": "good", "score": 1.0,
                                                               "model_version": "v"})
    store.close()
    kept = sorted(p.name for p in (tmp_path / ".ring" / "m").glob("*.png"))
    assert outcomes == ["kept"] * 5 and kept == [f"{i:032x}.png" for i in (3, 4)]  # oldest evicted first
    restarted = FeedbackStore(tmp_path, max_bytes=2500, max_age_s=1e-3)  # a restart adopts, then ages out
    time.sleep(0.01)
    with pytest.raises(NotKept):
        restarted.file("m", f"{4:032x}", "good", None)
    assert not list((tmp_path / ".ring" / "m").glob("*.png"))
    restarted.close()


def test_a_failing_disk_loses_the_copy_never_the_inspection(tmp_path):
    (tmp_path / ".ring").write_text("not a folder")  # every write fails
    outcomes = []
    store = FeedbackStore(tmp_path, max_bytes=1 << 20, max_age_s=60, on_write=outcomes.append)
    store.keep("m", "a" * 32, b"\x89PNG", {})
    store.close()
    assert outcomes == ["failed"]


def test_a_slow_disk_drops_copies_beyond_the_pending_bound(tmp_path, monkeypatch):
    """While the disk stalls, at most MAX_PENDING_BYTES of uploads wait in memory; the rest are dropped."""
    import threading

    from service.feedback import MAX_PENDING_BYTES

    gate, outcomes = threading.Event(), []
    store = FeedbackStore(tmp_path, max_bytes=1 << 30, max_age_s=60, on_write=outcomes.append)
    write = store._write
    monkeypatch.setattr(store, "_write", lambda *a: (gate.wait(10), write(*a)))
    big = b"\x89PNG" + bytes(MAX_PENDING_BYTES // 3 - 100)
    for i in range(5):
        store.keep("m", f"{i:032x}", big, {})  # returns at once, whatever the disk does
    assert outcomes == ["dropped", "dropped"]
    gate.set()
    store.close()
    assert outcomes.count("kept") == 3
