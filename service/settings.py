"""Service settings from the environment (prefix SAE_INSPECT_), built inside create_app()."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SAE_INSPECT_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    models_dir: Path = Field(Path("artifacts"), description="folder of *.safetensors artifacts, one per model")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda:N'")
    max_batch_size: int | None = Field(None, ge=1, le=256, description="images per micro-batch; unset = "
                                       "chosen per device (4 on CPU, 32 on CUDA)")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="wait for more images before running a "
                                 "batch, only while more requests for the model are being decoded (none: it runs at "
                                 "once)")
    queue_size: int = Field(64, ge=1, description="queued images per model before 503 + Retry-After")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="request bodies above this get 413")
    max_pixels: int = Field(40_000_000, ge=1, description="images above this pixel count get 413 before decoding")
    max_decode_pixels: int = Field(48_000_000, ge=1, description="pixels being decoded at once across all "
                                   "requests; more waits up to decode_wait_s, then 503 + Retry-After")
    decode_wait_s: float = Field(10.0, ge=0, description="how long an image may wait for decoding capacity")
    decode_threads: int = Field(min(4, os.cpu_count() or 1), ge=1, le=64,
                                description="threads decoding uploads (a pool of its own, beside inference)")
    cpu_turns: bool = Field(True, description="a CPU micro-batch runs alone on the cores: uploads are decoded "
                            "between batches, not during them (service/turns.py; bench/results/cost.md)")
    torch_threads: int = Field(0, ge=0, le=256, description="intra-op threads for inference; 0 = torch's "
                               "default (one per core)")
    max_batch_files: int = Field(32, ge=1, description="files per /inspect/batch request")
    body_timeout_s: float = Field(30.0, gt=0, description="the whole request body must arrive within this "
                                  "time of the request's start (408)")
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must deliver complete request "
                                    "headers within this time of opening (or of its previous response)")
    keepalive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(256, ge=1, description="open connections; more are answered 503 and closed")
    prefer_runtime: Literal["auto", "pytorch", "onnxruntime"] = Field(
        "auto", description="which file serves a model that has both a .safetensors and its exported .onnx: "
        "auto = the ONNX export on CPU when onnxruntime is installed (faster there), PyTorch on a GPU")
    api_key: SecretStr | None = Field(None, description="bearer key for admin routes; unset = admin disabled")
    watch_interval_s: float = Field(2.0, ge=0, description="poll the models folder this often; 0 = off")
    drift_threshold: float = Field(1e6, gt=1, description="drift and anomaly-burst alarms fire when their "
                                   "Shiryaev-Roberts statistic reaches this; while the process is unchanged the "
                                   "mean number of images between false alarms is at least this many")
    usual_defect_rate: float = Field(0.0, ge=0, lt=1, description="the line's usual share of defective parts: "
                                     "the anomaly-burst alarm's null rate is the model's alpha plus this")
    burst_factor: float = Field(5.0, gt=1, description="the anomaly-burst alarm bets on the anomalous share "
                                "rising to this many times its null rate")
    feedback_dir: Path | None = Field(None, description="opt-in: keep recent uploads per model here (a bounded "
                                      "ring) so operators can file them as good or defect; unset = off")
    feedback_max_bytes: int = Field(2 * 2**30, ge=1 << 20, description="disk the ring of kept uploads may use")
    feedback_max_age_s: float = Field(7 * 86400, gt=0, description="kept uploads older than this are deleted")
    operator_key: SecretStr | None = Field(None, description="bearer key for POST .../feedback (the admin key "
                                           "works too); unset and no admin key = feedback disabled")
    heatmap_max_side: int = Field(512, ge=16, description="longest side of returned heat maps")

    @model_validator(mode="after")
    def _budget_holds_one_image(self) -> Settings:
        if self.max_decode_pixels < self.max_pixels:
            raise ValueError(f"max_decode_pixels ({self.max_decode_pixels}) must be at least max_pixels "
                             f"({self.max_pixels}) or the largest legal image could never be decoded")
        return self


class SettingsError(ValueError):
    """A bad environment value, as one line naming the variable."""


def load_settings() -> Settings:
    """Settings from the environment; a bad value raises SettingsError naming the variable(s)."""
    try:
        return Settings()
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = "_".join(str(x) for x in err.get("loc", ())).upper()
            name = f"{ENV_PREFIX}{loc}" if loc else "settings"
            given = err.get("input")
            shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
            parts.append(f"{name}: {err.get('msg', 'invalid value')}{shown}")
        raise SettingsError("; ".join(parts)) from None
