"""service/turns.py: a CPU micro-batch runs alone; decodes share the cores between batches and cannot starve them."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.batcher import MicroBatcher
from service.metrics import Metrics
from service.turns import Turns

WAIT = 10.0  # seconds any event may take before the test fails instead of hanging


def _hold(events: list[str], name: str, release: threading.Event, started: threading.Event | None = None):
    def run() -> str:
        events.append(f"{name} start")
        if started is not None:
            started.set()
        assert release.wait(WAIT)
        events.append(f"{name} end")
        return name
    return run


def test_a_decode_waits_for_the_running_batch():
    turns, events = Turns(), []
    release, batch_started = threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(turns.batch, _hold(events, "batch", release, batch_started))
        assert batch_started.wait(WAIT)
        decode = pool.submit(turns.decode, lambda: events.append("decode") or "decoded")
        time.sleep(0.2)
        assert not decode.done()  # held while the batch has the cores
        release.set()
        assert decode.result(WAIT) == "decoded" and batch.result(WAIT) == "batch"
    assert events == ["batch start", "batch end", "decode"]


def test_a_batch_waits_for_running_decodes_and_new_decodes_wait_for_it():
    turns, events = Turns(), []
    release_decode, decode_started = threading.Event(), threading.Event()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(turns.decode, _hold(events, "decode 1", release_decode, decode_started))
        assert decode_started.wait(WAIT)
        batch = pool.submit(turns.batch, lambda: events.append("batch") or "batch")
        deadline = time.time() + WAIT
        while not turns._batches_waiting and time.time() < deadline:  # the batch is queued behind decode 1
            time.sleep(0.01)
        second = pool.submit(turns.decode, lambda: events.append("decode 2") or "decode 2")
        time.sleep(0.2)
        assert not batch.done() and not second.done()  # decode 2 arrived after the batch: it goes after it
        release_decode.set()
        assert first.result(WAIT) == "decode 1" and batch.result(WAIT) == "batch"
        assert second.result(WAIT) == "decode 2"
    assert events == ["decode 1 start", "decode 1 end", "batch", "decode 2"]


def test_decodes_run_together():
    turns, events = Turns(), []
    release, started = threading.Event(), [threading.Event(), threading.Event()]
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(turns.decode, _hold(events, f"decode {i}", release, started[i])) for i in range(2)]
        assert all(s.wait(WAIT) for s in started)  # both inside at once
        release.set()
        assert [r.result(WAIT) for r in runs] == ["decode 0", "decode 1"]


def test_disabled_a_decode_runs_during_a_batch():
    turns, events = Turns(enabled=False), []
    release, batch_started = threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(turns.batch, _hold(events, "batch", release, batch_started))
        assert batch_started.wait(WAIT)
        assert pool.submit(turns.decode, lambda: events.append("decode") or "decoded").result(WAIT) == "decoded"
        release.set()
        batch.result(WAIT)
    assert events == ["batch start", "decode", "batch end"]


def test_an_exception_releases_the_turn():
    turns = Turns()

    def boom():
        raise ValueError("bad image")

    for run in (turns.batch, turns.decode):
        try:
            run(boom)
        except ValueError:
            pass
    assert turns.decode(lambda: "decoded") == "decoded" and turns.batch(lambda: "ran") == "ran"


def test_the_micro_batcher_runs_its_batches_under_the_gate():
    turns, seen = Turns(), []

    class Scorer:
        def inspect(self, images):
            seen.append(turns._batch_running)  # the batch holds the cores while the model runs
            return [float(np.mean(im)) for im in images]

    async def run():
        b = MicroBatcher("parts", Scorer(), ThreadPoolExecutor(1), Metrics(), max_batch=8, max_wait_s=0.0,
                         queue_size=4, arriving=lambda: 0, turns=turns)
        b.start()
        out = await asyncio.wait_for(b.submit(np.full((8, 8, 3), 3, np.uint8)), WAIT)
        await b.drain_and_stop()
        return out

    assert asyncio.run(run()).inspection == 3.0 and seen == [True] and not turns._batch_running


def test_the_service_gives_its_cpu_models_the_gate_and_the_setting_turns_it_off(make_client):
    from bench.images import part_png

    for on in (True, False):
        with make_client(cpu_turns=on) as c:
            gate = c.app.state.turns
            assert gate.enabled is on
            assert c.app.state.registry.models["parts"].batcher.turns is gate  # one gate for the server's cores
            r = c.post("/v1/models/parts/inspect", content=part_png(101), headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.json()["verdict"] in ("good", "defect")
