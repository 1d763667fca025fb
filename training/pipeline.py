"""The one fit sequence: split good images, fit the SAE, calibrate, and return a complete detector.

The CLI, the benchmarks and the test fixtures all call ``fit_calibrated``; nothing else
assembles a detector from its parts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import ModelConfig
from models.detector import Detector
from training.calibrate import (
    FEW_CALIBRATION_PARTS,
    CalibrationConfig,
    calibrate,
    f1_optimal,
    score_files,
    split_images,
)
from training.canvas import choose_canvas
from training.fit import FitConfig, fit_detector
from training.select import select_normalization

log = logging.getLogger(__name__)


def fit_calibrated(paths: Sequence[Path], config: ModelConfig, fit_cfg: FitConfig = FitConfig(),
                   cal_cfg: CalibrationConfig = CalibrationConfig(), device: torch.device | str = "cpu",
                   backbone_weights: str | None = None, init: Detector | None = None,
                   provenance: Mapping[str, Any] | None = None,
                   defect_paths: Sequence[Path] | None = None) -> Detector:
    """Good image files -> a calibrated detector carrying its provenance.

    `init` continues training from an earlier detector (its model config is used and
    `config` must equal it); `provenance` is recorded in the artifact's metadata;
    `defect_paths` (labelled defects, optional) add an F1-optimal threshold report beside
    the conformal rule, which stays the decision rule.
    """
    device = torch.device(device)
    if init is not None and config != init.config:
        raise ValueError("retraining keeps the model shape of --init; the given model config differs from it")
    canvas_table = None
    if init is None and fit_cfg.canvas == "native":
        config, canvas_table = choose_canvas(paths, config)
        log.info("canvas %d px: %s (median long side %s px of %d images)", config.preprocess.size,
                 canvas_table["rule"], canvas_table["median_long_side"], canvas_table["n_images"])
    if config.scoring.normalize != "auto":  # nothing to choose: no image is held out for it
        cal_cfg = dataclasses.replace(cal_cfg, select_count=0)
    split = split_images(paths, cal_cfg)
    fit_paths, cal_paths = split.fit, split.calibrate
    log.info("%d good images in %d parts (groups: %s): %d fit the SAE, %d choose the scoring, %d calibrate (%d "
             "parts)", len(paths), split.n_groups, cal_cfg.groups, len(fit_paths), len(split.select), len(cal_paths),
             split.calibration_parts)
    if split.calibration_parts < FEW_CALIBRATION_PARTS:
        log.warning("the calibration's %d images come from only %d parts (groups: %s), so new parts may alarm "
                    "more often than alpha (on magnetic_tile cut to 90 images, calibrations of 5 parts flagged 7.4 %% "
                    "of new good images at alpha 2.8 %%). Add good images, or if the images are not repeated shots "
                    "of one part, fit with --calib-groups none", len(cal_paths), split.calibration_parts,
                    cal_cfg.groups)
    # the SAE that chooses the scoring takes no moved copies: with them the choice took `position` on tire (one
    # seed of three, image AUROC 0.888 -> 0.727); the SAE fitted after the choice (the refit) takes them
    choosing = dataclasses.replace(fit_cfg, augment=0) if split.select else fit_cfg
    det = fit_detector(fit_paths, config, choosing, device, backbone_weights, init)
    profile = dict(det.meta.get("fit_profile_s", {}))
    t0 = time.perf_counter()
    if config.scoring.normalize == "auto":
        choice, table = select_normalization(det.offline(), split.select, seed=fit_cfg.seed)
        det = det.with_scoring(normalize=choice)
        det = det.replace(meta={**det.meta, "scoring_selection": {"normalize": choice, **table}})
        if choice != "none":  # no good-image test read free pose reliably (bench/results/selection_transfer.md)
            log.info("scoring %s assumes each image position shows the same part of the product; for parts placed "
                     "freely, fit with --normalize none", choice)
    profile["selection"] = time.perf_counter() - t0
    if split.select and len(split.fit) < cal_cfg.refit_below:  # few images: the selection's join the fit
        # (a selection split exists only when this fit chose the scoring: never with init, never with it given)
        log.info("only %d images fit the SAE: fitting it again on them and the %d selection images (scoring %s "
                 "kept)", len(split.fit), len(split.select), det.config.scoring.normalize)
        chosen = det
        det = fit_detector(sorted(split.fit + split.select), chosen.config, fit_cfg, device, backbone_weights)
        det = det.replace(meta={**det.meta, "scoring_selection": chosen.meta["scoring_selection"],
                                "refit_with_selection": True})
        profile |= {f"refit_{k}": v for k, v in det.meta["fit_profile_s"].items()}
    t0 = time.perf_counter()
    calibration = calibrate(det.offline(), cal_paths, cal_cfg)
    profile["calibration"] = time.perf_counter() - t0
    log.info("fit profile (s): %s", ", ".join(f"{k} {v:.1f}" for k, v in profile.items()))
    meta = {**det.meta, **(provenance or {}), "fit_profile_s": profile,
            "n_calibration_images": len(calibration.scores), "n_selection_images": len(split.select),
            "n_groups": split.n_groups, "n_calibration_parts": split.calibration_parts,
            "calibration_split": dataclasses.asdict(cal_cfg),
            "parent_version": init.version if init is not None else None}
    if canvas_table is not None:
        meta["canvas_choice"] = canvas_table
    elif init is not None:  # a retrained model keeps its parent's canvas and scoring: the tables that chose them too
        meta |= {k: init.meta[k] for k in ("canvas_choice", "scoring_selection") if k in init.meta}
    det = det.replace(calibration=calibration, meta=meta)
    if defect_paths:
        _, bad, _ = score_files(det.offline(), defect_paths, desc="defects")
        report = f1_optimal(np.asarray(calibration.scores), bad)
        log.info("labelled defects: F1-optimal threshold %.4g (F1 %.3f, precision %.3f, recall %.3f); "
                 "the decision rule stays the conformal threshold %.4g", report["threshold"], report["f1"],
                 report["precision"], report["recall"], calibration.threshold)
        det = det.replace(meta={**det.meta, "f1_optimal_on_defects": report})
    return det
