"""`sae-inspect-serve`: run the inspection service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sae-inspect-serve", description=__doc__)
    p.add_argument("--models-dir", type=Path, help="folder of *.safetensors artifacts (env SAE_INSPECT_MODELS_DIR)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", help="auto | cpu | cuda:N (env SAE_INSPECT_DEVICE)")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    if a.models_dir:
        os.environ["SAE_INSPECT_MODELS_DIR"] = str(a.models_dir)
    if a.device:
        os.environ["SAE_INSPECT_DEVICE"] = a.device
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    import uvicorn

    from service.app import create_app
    from service.server import uvicorn_config
    from service.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as e:
        print(f"sae-inspect-serve: bad setting: {e}", file=sys.stderr)
        return 2
    # One process per device: the model lives in this process's memory and micro-batching
    # needs every request for a device to reach the same queue.
    app = create_app(settings)
    uvicorn.Server(uvicorn_config(app, settings, a.host, a.port, a.log_level)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
