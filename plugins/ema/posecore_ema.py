"""posecore-ema: an exponential moving average of the weights, as MMEngine's ``EMAHook`` (RTMPose's
``dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True)`` is
``[ema] momentum = 0.0002, update_buffers = true``).

Active with ``--plugin ema``, ``plugins = ["ema"]`` or ``[ema] enabled = true``. The average starts as a copy of
the model once its weights are loaded (``load_from``, ``model.init_weights``, a resumed checkpoint) and follows
the trained weights after each iteration, by MMEngine's rule: before iteration ``begin_iter`` it is a copy of the
model; from then on the first update copies, and every ``interval``-th update after it blends
``average = (1 - m) * average + m * trained`` with, for ``ema_type = "ExpMomentumEMA"`` (YOLOX's warm-up),
``m = (1 - momentum) * exp(-(1 + updates) / gamma) + momentum`` (``updates``: the updates before this one), for
``"ExponentialMovingAverage"`` ``m = momentum``. Buffers (BatchNorm statistics) are copied from the model at each
update, or averaged too with ``update_buffers = true``, where integer buffers keep the first update's value, as in
MMEngine. Under torchrun every rank keeps its own average (the same parameters, its own BatchNorm buffers).

Validation, ``save_best`` and the vis images score the average. Each checkpoint holds the average as ``model`` and
the trained weights as ``train_model``, plus ``plugins.ema`` (the number of updates). So the averaged weights are
what ``posecore test/predict --checkpoint``, ``load_from`` and ``posecore.load_model`` read, with this plugin or
without it; ``--resume`` trains on from ``train_model`` (without the plugin too, the average then left out).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Generator

from posecore import hookimpl
from posecore.config import Key, Section
from posecore.errors import ConfigError


@hookimpl
def config_schema() -> dict[str, Any]:
    return {"ema": Section({
        "enabled": Key(bool, False, "Validate and save an exponential moving average of the weights."),
        "ema_type": Key(str, "ExpMomentumEMA", "MMEngine's averaging: `ExpMomentumEMA` (a weight that decays "
                                               "from 1 to `momentum`) or `ExponentialMovingAverage` (`momentum`).",
                        choices=("ExpMomentumEMA", "ExponentialMovingAverage")),
        "momentum": Key(float, 0.0002, "The trained weights' share in each update (0 < momentum < 1)."),
        "gamma": Key(int, 2000, "ExpMomentumEMA: updates over which the weight decays towards `momentum`.", min=1),
        "interval": Key(int, 1, "Blend at every `interval`-th update (buffers are copied at each).", min=1),
        "update_buffers": Key(bool, False, "Average the buffers (BatchNorm statistics) too; false: copy them."),
        "begin_iter": Key(int, 0, "Until this iteration the average is a copy of the model.", min=0),
    }, "Exponential moving average of the weights (posecore-ema).")}


@hookimpl
def configure(config: dict[str, Any]) -> None:
    momentum = config["ema"]["momentum"]
    if not 0 < momentum < 1:
        raise ConfigError(f"ema.momentum is {momentum}; use a number between 0 and 1 (exclusive), e.g. 0.0002")


@dataclass
class EmaState:
    """The per-run state: the averaged copy of the model, the number of updates so far, and ``pairs``."""

    steps: int = 0
    module: Any = None
    pairs: Pairs | None = None
    """``module``'s tensors paired with the trained model's, taken at the first ``after_iter`` after ``module`` is
    made (the trained tensors are the same objects all run: the optimizer and ``load_state_dict`` write into them),
    and again should ``run.model`` become another module."""


@dataclass
class Pairs:
    """Lists of the average's tensors and the trained model's ``source``'s, pairwise, each as (averages, trained)."""

    source: Any
    everything: tuple[list, list]
    """Their whole state_dicts: copied before ``begin_iter``."""
    first: tuple[list, list]
    """What the rule averages (parameters, or the whole state_dict with ``update_buffers``): the first update copies
    them."""
    blend: tuple[list, list]
    """Of ``first``, the floating-point tensors: later updates blend them."""
    buffers: tuple[list, list]
    """Without ``update_buffers``, the buffers: each update copies them."""


def _pairs(module: Any, model: Any, update_buffers: bool) -> Pairs:
    average, trained = module.state_dict(), model.state_dict()
    everything = [(value, trained[key]) for key, value in average.items()]
    if update_buffers:
        first, buffers = everything, []
    else:
        parameters = dict(model.named_parameters())
        first = [(value, parameters[key]) for key, value in module.named_parameters()]
        buffers = list(zip(module.buffers(), model.buffers()))
    blend = [pair for pair in first if pair[0].is_floating_point()]
    return Pairs(model, *map(_unzip, (everything, first, blend, buffers)))


def _unzip(pairs: list[tuple[Any, Any]]) -> tuple[list, list]:
    return [average for average, _ in pairs], [trained for _, trained in pairs]


@hookimpl
def before_build(run: Any) -> None:
    run.plugin_data["ema"] = EmaState()


@hookimpl(wrapper=True)
def before_train(run: Any) -> Generator[None, Any, Any]:
    results = yield  # after every before_train: the model's starting (or resumed) weights are loaded by then
    state: EmaState = run.plugin_data["ema"]
    options = run.config["ema"]
    if state.module is None:
        if run.resumed_from is not None:
            run.log.info("ema: %s holds no average; it starts fresh from the trained weights", run.resumed_from)
        _make_average(run)
    run.log.info("ema: %s, momentum %g, gamma %d, interval %d, update_buffers %s, begin_iter %d%s",
                 options["ema_type"], options["momentum"], options["gamma"], options["interval"],
                 str(options["update_buffers"]).lower(), options["begin_iter"],
                 f"; continuing after {state.steps} updates" if state.steps else "")
    return results


def _make_average(run: Any) -> None:
    state: EmaState = run.plugin_data["ema"]
    state.module = copy.deepcopy(run.model).requires_grad_(False)
    state.pairs = None  # paired with the trained tensors at the next update


@hookimpl
def after_iter(run: Any) -> None:
    import torch

    state: EmaState = run.plugin_data["ema"]
    options = run.config["ema"]
    if state.pairs is None or state.pairs.source is not run.model:
        state.pairs = _pairs(state.module, run.model, options["update_buffers"])
    pairs = state.pairs
    with torch.no_grad():
        if run.iteration < options["begin_iter"]:
            _copy(pairs.everything)
            return
        if state.steps == 0:
            _copy(pairs.first)
        elif state.steps % options["interval"] == 0:
            _blend(state, options)
        _copy(pairs.buffers)
    state.steps += 1


def _copy(pairs: tuple[list, list]) -> None:
    import torch

    if pairs[0]:
        torch._foreach_copy_(*pairs)


def _blend(state: EmaState, options: dict[str, Any]) -> None:
    """One averaging step, with MMEngine's tensor operations (``mul_``, ``add_``; ``lerp_``) in their foreach forms,
    which give the same bits (each tensor's own op, on a CPU)."""
    import torch

    averages, trained = state.pairs.blend
    if not averages:
        return
    momentum = options["momentum"]
    if options["ema_type"] == "ExpMomentumEMA":
        momentum = (1 - momentum) * math.exp(-(1 + state.steps) / options["gamma"]) + momentum
        torch._foreach_mul_(averages, 1 - momentum)
        torch._foreach_add_(averages, trained, alpha=momentum)
    else:
        torch._foreach_lerp_(averages, trained, momentum)


@hookimpl
def eval_model(run: Any) -> Any:
    return run.plugin_data["ema"].module


@hookimpl
def save_state(run: Any) -> dict[str, Any]:
    return {"steps": run.plugin_data["ema"].steps}


@hookimpl
def load_state(run: Any, state: dict[str, Any]) -> None:
    run.plugin_data["ema"].steps = state["steps"]
    _make_average(run)  # from the resumed trained weights; the core then loads the checkpoint's average into it
