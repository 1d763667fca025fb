"""Shared fixtures: generated parts and one small fitted model, built once per session."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from models.config import ModelConfig
from models.detector import Detector
from models.imageio import list_images
from models.synthetic import write_dataset
from service.app import create_app
from service.settings import Settings
from training.calibrate import CalibrationConfig
from training.fit import FitConfig
from training.pipeline import fit_calibrated

torch.set_num_threads(2)
FAST_FIT = FitConfig(steps=250, batch_size=1024, max_patches=40_000)
FAST_CAL = CalibrationConfig(alpha=0.1, fraction=0.25, min_count=12)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("parts"), n_train=48, n_test_good=12, n_test_bad=12, seed=1)


@pytest.fixture(scope="session")
def detector(dataset: Path) -> Detector:
    logging.getLogger("training").setLevel(logging.ERROR)
    return fit_calibrated(list_images(dataset / "train" / "good"), ModelConfig(), FAST_FIT, FAST_CAL, "cpu",
                          provenance={"name": "parts", "version": "test-1"})


@pytest.fixture(scope="session")
def artifact(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("artifacts") / "parts.safetensors"
    detector.save(path)
    return path


@pytest.fixture
def models_dir(tmp_path: Path, artifact: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(artifact, d / "parts.safetensors")
    return d


@pytest.fixture
def make_client(models_dir: Path):
    @contextmanager
    def _make(**overrides) -> Iterator[TestClient]:
        settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0, **overrides)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client
    return _make


@pytest.fixture
def client(make_client) -> Iterator[TestClient]:
    with make_client(api_key="s3cret-key") as c:
        yield c
