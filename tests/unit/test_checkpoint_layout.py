"""A checkpoint of an earlier state layout is refused at start-up with one line (DESIGN §16)."""
from __future__ import annotations

import pytest

from app.config import InvalidConfigError, load_config
from app.pipeline import LAYOUT, LAYOUT_FILE, check_checkpoint


def _config(tmp_path):
    return load_config([], {"CHECKPOINT_DIR": str(tmp_path / "ckpt")})


def test_a_new_checkpoint_is_marked_with_the_layout_and_accepted_again(tmp_path):
    config = _config(tmp_path)
    check_checkpoint(config)
    assert (tmp_path / "ckpt" / LAYOUT_FILE).read_text().strip() == LAYOUT
    (tmp_path / "ckpt" / "sessions" / "offsets").mkdir(parents=True)
    check_checkpoint(config)  # its own layout: accepted


def test_a_checkpoint_of_the_previous_layout_is_refused_naming_what_to_do(tmp_path):
    (tmp_path / "ckpt" / "sessions" / "offsets").mkdir(parents=True)  # written before layouts were marked
    with pytest.raises(InvalidConfigError) as refused:
        check_checkpoint(_config(tmp_path))
    message = str(refused.value)
    assert "\n" not in message and "layout 2" in message and "layout 3" in message and "--reset-output" in message
    assert not (tmp_path / "ckpt" / LAYOUT_FILE).exists()
