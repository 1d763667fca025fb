"""The models being served: one per artifact in the models folder, hot-swappable.

A (re)load builds the new detector off the event loop, warms it up with one batch of the size
it will serve, and only then swaps it in. Requests already queued finish on the old
model, whose batcher drains before it stops. A bad artifact is logged and counted,
and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.drift import DriftConfig, DriftMonitor
from models.files import ARTIFACT_SUFFIX as SUFFIX
from models.files import ONNX_SUFFIX, ArtifactError
from models.inspection import Scorer
from models.portable import StaleExport, load_scorer
from service.batcher import MicroBatcher
from service.metrics import Metrics
from service.settings import Settings
from service.turns import Turns

log = logging.getLogger(__name__)
DEVICE_BATCH = {"cpu": 4, "cuda": 32}
"""Micro-batch size when SAE_INSPECT_MAX_BATCH_SIZE is unset. On CPU a batch gains nothing over one image
(ONNX Runtime in process: 38-40 images/s at batch 1 and at 8 on the 256 px model, 5.7-6.2 on the 640 px one:
bench/results/service_load*.md), so a batch only has to let the cores run one batch while the next one's
clients upload: 4 (since 2026-12-05; 8 before) kept the 2 cores busier under 8 concurrent clients (two pairs of
runs on the 256 px model: 36.1 images/s both times against 33.5-33.7, p99 312-315 ms against 352-389 ms; the
640 px model 5.7 against 5.9 images/s in one pair, within its rounds' spread: bench/results/service_load_batch/).
A GPU needs larger batches to fill."""


def device_kind(det: Scorer) -> str:
    """'cpu' or 'cuda': where a model's batches run (an ONNX export runs on the CPU)."""
    device = getattr(det, "device", None)
    return device.type if device is not None else "cpu"


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = ("a model name (the file stem) must be 1-64 ASCII letters, digits, '_', '.' or '-', start with a "
             "letter or digit and hold no '..'")


def _cuda_available() -> bool:
    """Without PyTorch (an ONNX-only install) there is no CUDA to serve on."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def valid_name(name: str) -> bool:
    """Model names are plain file stems: no separators, no '..', nothing hidden."""
    return bool(NAME_RE.fullmatch(name)) and ".." not in name


@dataclass
class Served:
    name: str
    detector: Scorer
    batcher: MicroBatcher
    path: Path
    stamp: tuple[int, int]
    drift: DriftMonitor
    """Drift and burst evidence of this version's calibration: a reload (new calibration) starts afresh.
    Kept in memory only: a restart starts from zero too (the evidence is re-earned, never carried
    over from a stream the new process did not see)."""
    loaded_at: float = field(default_factory=time.time)


@dataclass
class LoadFailure:
    name: str
    error: str
    at: float = field(default_factory=time.time)


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics, executor: Executor, turns: Turns):
        self.settings, self.metrics, self.executor = settings, metrics, executor
        self.turns = turns
        """The server's one gate between CPU inference and decoding (service.turns): the cores are shared."""
        # Loading + warm-up get their own thread: a reload must not wait behind a full inference queue.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self.models: dict[str, Served] = {}
        self.failures: dict[str, LoadFailure] = {}
        self._ignored: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._failed_stamps: dict[str, tuple] = {}
        self.companions: dict[str, Path] = {}
        """name -> the .safetensors beside a served .onnx (explanations, and the staleness check)."""
        self.preferred = self._preferred_suffix()
        """The file that serves a model with both (fixed for the process: settings and installed runtimes)."""
        self.stale: dict[str, str] = {}
        """ONNX files found to be exported from another version of the artifact beside them, and why."""
        self._arriving: Counter[str] = Counter()
        """model name -> requests for it being decoded now (the micro-batcher waits for them, and only them)."""

    @contextlib.contextmanager
    def arriving(self, name: str) -> Iterator[None]:
        """Counts a request for `name` as on its way to the model's queue while the block runs (its decode)."""
        self._arriving[name] += 1
        try:
            yield
        finally:
            self._arriving[name] -= 1
            if not self._arriving[name]:  # a model unloaded later leaves no entry behind
                del self._arriving[name]

    @property
    def ignored(self) -> dict[str, str]:
        """Files in the models folder that are not served, by file name, and why."""
        return {**self._ignored, **self.stale}

    def _preferred_suffix(self) -> str:
        """The file that serves a model with both: SAE_INSPECT_PREFER_RUNTIME, where ``auto`` takes the ONNX
        export on CPU when onnxruntime is installed (bench/results/cost.md: faster than PyTorch eager there)."""
        pref = self.settings.prefer_runtime
        if pref == "auto":
            on_cpu = self.settings.device == "cpu" or (self.settings.device == "auto" and not _cuda_available())
            pref = "onnxruntime" if on_cpu and _installed("onnxruntime") else "pytorch"
        return ONNX_SUFFIX if pref == "onnxruntime" else SUFFIX

    def artifact_files(self) -> dict[str, Path]:
        """Servable artifacts (.safetensors, or exported .onnx) by model name; unservable ones are logged
        once and listed in `ignored`. With both files for one name, `preferred` picks; an ONNX
        file chosen that way explains through (and is checked against) the .safetensors beside it."""
        d = self.settings.models_dir
        found = sorted(p for suffix in (SUFFIX, ONNX_SUFFIX) for p in d.glob(f"*{suffix}") if p.is_file()) \
            if d.is_dir() else []
        ignored = {p.name: NAME_RULE for p in found if not valid_name(p.stem)}
        preferred = self.preferred
        stems = {}
        for p in found:
            if p.name not in ignored:
                stems.setdefault(p.stem, []).append(p)
        self.companions = {}
        for stem, paths in stems.items():
            if len(paths) > 1:
                for p in paths:
                    if p.suffix != preferred:
                        ignored[p.name] = f"{stem}{preferred} serves (SAE_INSPECT_PREFER_RUNTIME)" + (
                            "; this artifact explains and vouches for it" if p.suffix == SUFFIX else "")
                if preferred == ONNX_SUFFIX:
                    self.companions[stem] = next(p for p in paths if p.suffix == SUFFIX)
        for fname in ignored.keys() - self._ignored.keys():
            (log.info if "SAE_INSPECT_PREFER_RUNTIME" in ignored[fname] else log.warning)(
                "models folder: not serving %r: %s", fname, ignored[fname])
        self._ignored = ignored
        # a stale export stays listed while its file exists; it is re-checked at each change of either file
        present = {p.name for p in found}
        self.stale = {n: r for n, r in self.stale.items() if n in present}
        return {p.stem: p for p in found if p.name not in ignored}

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def _publish_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    def _stamp(self, path: Path) -> tuple:
        """Change marker of a model's files: the served file and, for an ONNX export, the artifact beside it
        and the export under the same name (a new artifact makes a served export stale, a new export may
        make a stale one current)."""
        def mark(p: Path) -> tuple[int, int] | None:
            try:
                st = p.stat()
            except FileNotFoundError:
                return None
            return st.st_mtime_ns, st.st_size

        return tuple(mark(p) for p in (path, path.with_suffix(SUFFIX), path.with_suffix(ONNX_SUFFIX)))

    def _load_and_warm(self, path: Path) -> Scorer:
        companion = self.companions.get(path.stem) if path.suffix == ONNX_SUFFIX else None
        try:
            det = load_scorer(path, self.settings.device, companion=companion)
        except StaleExport as e:  # serve the artifact itself; the export is listed as not served, and why
            log.warning("model %s: %s; serving %s with PyTorch", path.stem, e, companion.name)
            self.stale[path.name] = str(e)
            det = load_scorer(companion, self.settings.device)
        else:
            self.stale.pop(path.name, None)
        if det.calibration is None:
            raise ArtifactError(f"{path.name}: artifact has no calibration; refit it with `sae-inspect fit`")
        # Warm-up at the batch size it will serve: proves it runs at that size (memory included: a GPU that cannot
        # hold a full batch fails here, and the serving version stays), and pays the runtime's slow first full
        # batch (ONNX Runtime on CPU grows its memory arena: the first batch of 8 at 640 px ran at half speed)
        # before any request does.
        det.inspect([np.full((64, 64, 3), 0.5, np.float32)] * self._batch_size(det))
        return det

    def _batch_size(self, det: Scorer) -> int:
        return self.settings.max_batch_size or DEVICE_BATCH.get(device_kind(det), 8)

    async def load(self, name: str) -> Served:
        """(Re)load one model from its artifact; on failure the current one stays and the error is raised."""
        async with self._lock:
            path = self.artifact_files().get(name)
            if path is None:
                raise FileNotFoundError(f"no artifact named {name!r} in the models folder")
            try:
                stamp = self._stamp(path)
                det = await asyncio.get_running_loop().run_in_executor(self._loader, self._load_and_warm, path)
            except (ArtifactError, OSError, ValueError, RuntimeError) as e:  # BackboneError is a ValueError
                msg = str(e).replace(str(self.settings.models_dir) + "/", "")  # no server paths in replies
                self.failures[name] = LoadFailure(name, msg)
                self.metrics.reloads.labels(name, "failed").inc()
                log.error("model %s: load failed, %s: %s", name,
                          "keeping the serving version" if name in self.models else "not serving it", msg)
                if name in self.models:
                    self.models[name].stamp = stamp  # don't retry the same bad file every poll
                raise ArtifactError(msg) from e
            s = self.settings
            kind = device_kind(det)
            batcher = MicroBatcher(name, det, self.executor, self.metrics, self._batch_size(det), s.max_wait_ms / 1000,
                                   s.queue_size, lambda: self._arriving[name], self.turns if kind == "cpu" else None)
            batcher.start()
            old = self.models.get(name)
            self.models[name] = Served(name, det, batcher, path, stamp, self._monitor(det))
            self.failures.pop(name, None)
            self._publish(name, det, old.detector if old else None)
            self._publish_ready()
            self.metrics.reloads.labels(name, "success").inc()
            log.info("model %s: serving version %s", name, det.version)
        if old:
            await old.batcher.drain_and_stop()
        return self.models[name]

    def _monitor(self, det: Scorer) -> DriftMonitor:
        s = self.settings
        return DriftMonitor(np.asarray(det.calibration.scores), det.calibration.alpha,
                            DriftConfig(s.drift_threshold, s.usual_defect_rate, s.burst_factor))

    def _publish(self, name: str, det: Scorer, old: Scorer | None) -> None:
        if old is not None:
            try:
                self.metrics.model_info.remove(name, old.version, old.config.backbone.name)
            except KeyError:
                pass
        self.metrics.model_info.labels(name, det.version, det.config.backbone.name).set(1)
        self.metrics.threshold.labels(name).set(det.calibration.threshold)
        self.metrics.alpha.labels(name).set(det.calibration.alpha)
        self.metrics.alarm_rate_90.labels(name).set(det.calibration.false_alarm_rate_90)
        self.metrics.drift_evidence.labels(name).set(0)
        self.metrics.burst_evidence.labels(name).set(0)

    async def unload(self, name: str) -> None:
        async with self._lock:
            served = self.models.pop(name, None)
            self._publish_ready()
        if served:
            try:
                self.metrics.model_info.remove(name, served.detector.version, served.detector.config.backbone.name)
            except KeyError:
                pass
            log.info("model %s: artifact removed, unloaded", name)
            await served.batcher.drain_and_stop()

    async def sync(self) -> dict[str, str]:
        """Load new or changed artifacts and unload removed ones -> {name: outcome}."""
        outcomes: dict[str, str] = {}
        files = self.artifact_files()
        for name, path in files.items():
            served = self.models.get(name)
            try:
                stamp = self._stamp(path)
            except OSError:
                continue
            failed_same = name not in self.models and self._failed_stamps.get(name) == stamp
            if (served and served.stamp == stamp) or failed_same:
                continue
            try:
                await self.load(name)
                outcomes[name] = "loaded"
            except (ArtifactError, FileNotFoundError) as e:
                outcomes[name] = f"failed: {e}"
                self._failed_stamps[name] = stamp
        for name in set(self.models) - set(files):
            await self.unload(name)
            outcomes[name] = "unloaded"
        for name in (set(self.failures) | set(self._failed_stamps)) - set(files):
            self.failures.pop(name, None)  # its file is gone: the failure is history, not state
            self._failed_stamps.pop(name, None)
        self._publish_ready()
        return outcomes

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the watcher must survive anything
                log.exception("models folder scan failed")

    async def close(self) -> None:
        for served in list(self.models.values()):
            await served.batcher.drain_and_stop()
        self._loader.shutdown(wait=True)
