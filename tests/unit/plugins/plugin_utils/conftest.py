"""Fixtures shared by the plugin_utils tests."""

import pytest

from helpers import simple_index


@pytest.fixture
def index(tmp_path):
    """Wheels alpha 1.0, beta 1.0 in a PEP 503 file index; returns paths and hashes."""
    return simple_index(tmp_path)
