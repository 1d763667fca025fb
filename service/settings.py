"""Service settings from the environment (prefix SAE_INSPECT_), built inside create_app()."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAE_INSPECT_", frozen=True)

    models_dir: Path = Field(Path("artifacts"), description="folder of *.safetensors artifacts, one per model")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda:N'")
    max_batch_size: int = Field(8, ge=1, le=256, description="images per micro-batch")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="wait for more images before running a batch")
    queue_size: int = Field(64, ge=1, description="queued images per model before 503 + Retry-After")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="request bodies above this get 413")
    max_pixels: int = Field(40_000_000, ge=1, description="images above this pixel count get 413 before decoding")
    max_batch_files: int = Field(32, ge=1, description="files per /inspect/batch request")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this time (408)")
    api_key: SecretStr | None = Field(None, description="bearer key for admin routes; unset = admin disabled")
    watch_interval_s: float = Field(2.0, ge=0, description="poll the models folder this often; 0 = off")
    heatmap_max_side: int = Field(512, ge=16, description="longest side of returned heat maps")
