"""Shared fixtures. Tests run on CPU, offline, against the in-process `tiny-random` model.

RATIONAL_CACHE points at a per-session temp folder so tests never touch the user's cache; the
original value is kept in REAL_CACHE for the slow tests that need the real embedded model.
"""

import os
from pathlib import Path

import pytest

REAL_CACHE = os.environ.get("RATIONAL_CACHE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("rational-cache")
    old = os.environ.get("RATIONAL_CACHE")
    os.environ["RATIONAL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RATIONAL_CACHE", None)
    else:
        os.environ["RATIONAL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_path(_session_cache):
    """Folder of the tiny-random model (built once per session)."""
    from rational.models import resolve

    return resolve("tiny-random").path


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


def real_cache_dir() -> Path:
    """The user's real cache (for slow tests), as it was before the session override."""
    if REAL_CACHE:
        return Path(REAL_CACHE).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rational"))
