"""LEAN_ARROW: which per-group path applyInPandasWithState runs, decided once at start-up."""
from __future__ import annotations

import pytest

from app.config import InvalidConfigError
from app.sessions.lean_arrow import SUPPORTED_PYSPARK, arrow_path


@pytest.mark.parametrize("version", [SUPPORTED_PYSPARK, "4.0.0", "4.3.0"])
def test_the_stock_path_runs_unless_the_lean_one_is_asked_for(version):
    path = arrow_path(False, version)
    assert not path.lean
    assert "stock" in path.reason and "LEAN_ARROW=false" in path.reason and version in path.reason


def test_the_lean_path_runs_when_asked_for_on_the_pyspark_it_was_written_against():
    path = arrow_path(True, SUPPORTED_PYSPARK)
    assert path.lean
    assert "lean" in path.reason and "LEAN_ARROW=true" in path.reason


@pytest.mark.parametrize("version", ["4.0.0", "4.2.1", "3.5.5"])
def test_the_lean_path_asked_for_on_another_pyspark_is_a_one_line_config_error(version):
    with pytest.raises(InvalidConfigError) as caught:
        arrow_path(True, version)
    message = str(caught.value)
    assert "\n" not in message
    assert "LEAN_ARROW" in message and version in message and SUPPORTED_PYSPARK in message
