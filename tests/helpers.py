"""Helpers for service tests: versioned artifacts."""

from __future__ import annotations

from pathlib import Path

from models.detector import Detector


def save_version(detector: Detector, path: Path, version: str) -> Path:
    """Write the session model under another version string (a 'retrained' artifact)."""
    detector.replace(meta={**detector.meta, "version": version}).save(path)
    return path
