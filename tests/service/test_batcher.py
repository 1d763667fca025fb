"""service/batcher.py: a micro-batch waits for more images only while more are on their way."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.batcher import MicroBatcher
from service.metrics import Metrics


class Echo:
    """A scorer that answers each image with its mean, recording the batch sizes it was given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def inspect(self, images):
        self.batches.append(len(images))
        return [float(np.mean(im)) for im in images]


def _batcher(scorer: Echo, arriving, max_wait_s: float) -> MicroBatcher:
    return MicroBatcher("parts", scorer, ThreadPoolExecutor(1), Metrics(), max_batch=8, max_wait_s=max_wait_s,
                        queue_size=16, arriving=arriving)


def test_a_lone_image_runs_at_once_when_nothing_else_is_arriving():
    scorer = Echo()

    async def run():
        b = _batcher(scorer, lambda: 0, max_wait_s=60.0)  # a batcher that waited out its window would time out
        b.start()
        out = await asyncio.wait_for(b.submit(np.full((8, 8, 3), 7, np.uint8)), 10)
        await b.drain_and_stop()
        return out

    out = asyncio.run(run())
    assert out.inspection == 7.0 and out.batch_size == 1 and scorer.batches == [1]


def test_the_batch_waits_for_an_image_still_being_decoded():
    scorer, arriving = Echo(), [1]  # one more request for the model is being decoded

    async def run():
        b = _batcher(scorer, lambda: arriving[0], max_wait_s=60.0)
        b.start()
        first = asyncio.ensure_future(b.submit(np.full((8, 8, 3), 1, np.uint8)))
        await asyncio.sleep(0.3)
        assert not first.done()  # held for the image on its way
        arriving[0] = 0  # its decode ended; it queues with no await in between (as in service/routes.py)
        second = await asyncio.wait_for(b.submit(np.full((8, 8, 3), 2, np.uint8)), 10)
        out = await first, second
        await b.drain_and_stop()
        return out

    first, second = asyncio.run(run())
    assert (first.inspection, second.inspection) == (1.0, 2.0)
    assert first.batch_size == second.batch_size == 2 and scorer.batches == [2]
