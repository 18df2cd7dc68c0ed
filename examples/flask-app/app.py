"""The pi-cicd sample app: a greeting that names the running release, and a health endpoint.

The version comes from ``APP_VERSION`` when set, else from the ``VERSION`` file beside this module.
``/healthz`` answers 200 only when every setting the app needs is present, so a release that needs
configuration the deployment does not have is reported unhealthy (and the CD agent rolls it back).
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, jsonify

HERE = Path(__file__).resolve().parent

# Settings a release cannot run without: the HEALTHCHECK fails while one is missing.
REQUIRED_SETTINGS: tuple[str, ...] = ()


def read_version() -> str:
    configured = os.environ.get("APP_VERSION", "").strip()
    if configured:
        return configured
    version_file = HERE / "VERSION"
    return version_file.read_text().strip() if version_file.is_file() else "unknown"


def missing_settings() -> list[str]:
    return [name for name in REQUIRED_SETTINGS if not os.environ.get(name)]


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> dict[str, str]:
        version = read_version()
        return {"message": f"Hello from pi-cicd! This is version {version}.", "version": version}

    @app.get("/healthz")
    def healthz() -> tuple[object, int]:
        missing = missing_settings()
        if missing:
            return jsonify(status="unhealthy", missing=missing), 500
        return jsonify(status="ok"), 200

    return app


app = create_app()
