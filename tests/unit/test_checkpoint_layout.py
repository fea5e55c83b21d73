"""A checkpoint of an earlier state layout is refused at start-up with one line (DESIGN §16)."""
from __future__ import annotations

import pytest

from app.config import InvalidConfigError, load_config
from app.pipeline import (LAYOUT, LAYOUT_FILE, LEFT_FILE, OPERATOR_FILE, STORE_LANE_FILE, check_checkpoint,
                          reads_stored_profiles)


def _config(tmp_path, **env):
    return load_config([], {"CHECKPOINT_DIR": str(tmp_path / "ckpt"), **env})


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


def test_a_checkpoint_goes_on_only_with_the_state_operator_that_wrote_it(tmp_path):
    tws = _config(tmp_path, STATE_OPERATOR="transformWithState")
    check_checkpoint(tws)
    assert (tmp_path / "ckpt" / OPERATOR_FILE).read_text().strip() == "transformWithState"
    (tmp_path / "ckpt" / "sessions" / "offsets").mkdir(parents=True)
    check_checkpoint(tws)
    with pytest.raises(InvalidConfigError) as refused:
        check_checkpoint(_config(tmp_path, STATE_OPERATOR="applyInPandasWithState"))
    message = str(refused.value)
    assert "\n" not in message and "STATE_OPERATOR=transformWithState" in message and "--reset-output" in message


def test_a_checkpoint_from_before_the_setting_is_applyInPandasWithState(tmp_path):
    config = _config(tmp_path, STATE_OPERATOR="applyInPandasWithState")
    check_checkpoint(config)
    (tmp_path / "ckpt" / OPERATOR_FILE).unlink()
    (tmp_path / "ckpt" / "sessions" / "offsets").mkdir(parents=True)
    check_checkpoint(config)
    with pytest.raises(InvalidConfigError, match="STATE_OPERATOR=applyInPandasWithState"):
        check_checkpoint(_config(tmp_path))  # the default, transformWithState


def test_only_a_checkpoint_from_before_left_profiles_reads_the_stored_ones(tmp_path):
    """A new checkpoint keeps an expired user's profile in its state from the start: its state
    step never reads user_profiles (DESIGN.md §16). One from before has users who left without it."""
    config = _config(tmp_path)
    check_checkpoint(config)
    assert not reads_stored_profiles(config)
    (tmp_path / "ckpt" / LEFT_FILE).unlink()  # as a checkpoint of an earlier version has it
    (tmp_path / "ckpt" / "sessions" / "offsets").mkdir(parents=True)
    check_checkpoint(config)  # goes on, and reads the stored profile of a user without an entry
    assert reads_stored_profiles(config)
    assert not reads_stored_profiles(_config(tmp_path, PROFILES="false"))


def test_a_checkpoint_from_before_the_store_lane_goes_on_only_from_a_committed_batch(tmp_path):
    """Its sums were tagged with the batch id alone: a batch it would replay may have added them."""
    config = _config(tmp_path)
    check_checkpoint(config)
    (tmp_path / "ckpt" / STORE_LANE_FILE).unlink()  # as the previous version left it
    for log_dir, ids in (("offsets", (0, 1, 2)), ("commits", (0, 1))):
        (tmp_path / "ckpt" / "sessions" / log_dir).mkdir(parents=True)
        for i in ids:
            (tmp_path / "ckpt" / "sessions" / log_dir / str(i)).write_text("v1\n")
    with pytest.raises(InvalidConfigError, match="batch 2 was planned by the previous version") as refused:
        check_checkpoint(config)
    assert "\n" not in str(refused.value)
    (tmp_path / "ckpt" / "sessions" / "commits" / "2").write_text("v1\n")  # the previous version finished it
    check_checkpoint(config)
    assert (tmp_path / "ckpt" / STORE_LANE_FILE).read_text().strip() == "3"
    (tmp_path / "ckpt" / "sessions" / "offsets" / "3").write_text("v1\n")  # planned by this version: goes on
    check_checkpoint(config)
