"""Run with `python -m pytest tests` once posecore-early-stop is installed."""

import posecore_early_stop
from posecore.testing import run_training


def test_counts_validations_without_improvement(tmp_path):
    recording = run_training(tmp_path, plugins={"early_stop": posecore_early_stop},
                             cfg_options=["early_stop.enabled=true", "early_stop.min_delta=10"])
    assert recording.count("after_val") == 2  # the tiny config validates at iterations 2 and 4
    assert recording.run.plugin_data["early_stop"]["waited"] == 1  # the first validation sets the best
