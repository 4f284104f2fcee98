"""posecore-early-stop: end a run cleanly when a validation metric stops improving.

    [early_stop]
    enabled = true    # `enabled = false` leaves the plugin inactive
    metric = "PCK"    # higher is better
    patience = 3      # validations in a row without improvement before stopping
    min_delta = 0.0   # the smallest rise that counts as an improvement
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from posecore import hookimpl
from posecore.config import Key, Section
from posecore.errors import ConfigError


@hookimpl
def config_schema() -> dict[str, Any]:
    return {"early_stop": Section({
        "enabled": Key(bool, False, "`true` turns early stopping on; `false` keeps the plugin off."),
        "metric": Key(str, "PCK", "Validation metric to watch; higher is better."),
        "patience": Key(int, 3, "Validations in a row without improvement before the run stops.", min=1),
        "min_delta": Key(float, 0.0, "The smallest rise of the metric that counts as an improvement.", min=0),
    }, "Stop training when a validation metric stops improving (posecore-early-stop).")}


@hookimpl
def before_build(run: Any) -> None:
    run.plugin_data["early_stop"] = {"best": -math.inf, "waited": 0}


@hookimpl
def after_val(run: Any, metrics: Mapping[str, float]) -> None:
    options, state = run.config["early_stop"], run.plugin_data["early_stop"]
    name = options["metric"]
    if name not in metrics:
        raise ConfigError(f"early_stop.metric is '{name}' but validation gives {', '.join(metrics)}")
    if metrics[name] > state["best"] + options["min_delta"]:
        state["best"], state["waited"] = metrics[name], 0
        return
    state["waited"] += 1
    if state["waited"] >= options["patience"]:
        run.request_stop(f"early_stop: {name} has not improved on {state['best']:.4g} by more than "
                         f"{options['min_delta']:g} in {state['waited']} validations")


@hookimpl
def save_state(run: Any) -> dict[str, Any]:
    return dict(run.plugin_data["early_stop"])


@hookimpl
def load_state(run: Any, state: dict[str, Any]) -> None:
    run.plugin_data["early_stop"].update(best=state["best"], waited=state["waited"])
