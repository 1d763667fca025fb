"""Shared fixtures: generated parts and one small fitted model, built once per session."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.config import ModelConfig
from models.detector import Detector
from models.imageio import list_images
from models.synthetic import write_dataset
from training.calibrate import calibrate
from training.fit import FitConfig, fit_detector, split_calibration

torch.set_num_threads(2)
FAST_FIT = FitConfig(steps=250, batch_size=1024, max_patches=40_000)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("parts"), n_train=48, n_test_good=12, n_test_bad=12, seed=1)


@pytest.fixture(scope="session")
def detector(dataset: Path) -> Detector:
    logging.getLogger("training").setLevel(logging.ERROR)
    fit, cal = split_calibration(list_images(dataset / "train" / "good"), 0.25, 12, seed=0)
    det = fit_detector(fit, ModelConfig(), FAST_FIT, torch.device("cpu"))
    det.calibration = calibrate(det, cal, alpha=0.1)
    det.meta.update({"name": "parts", "version": "test-1"})
    return det


@pytest.fixture(scope="session")
def artifact(detector: Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("artifacts") / "parts.safetensors"
    detector.save(path)
    return path
