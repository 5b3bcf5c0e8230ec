"""Shared fixtures: each area keeps its fixtures in tests/fixture_<area>.py, imported here."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from fixture_broker import *  # noqa: F401,F403
from fixture_mlflow import *  # noqa: F401,F403
from fixture_model import *  # noqa: F401,F403
from fixture_service import *  # noqa: F401,F403
