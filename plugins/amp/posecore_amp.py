"""posecore-amp: automatic mixed precision. The forward pass and loss run under ``torch.autocast``; with
float16, backward and step go through ``torch.amp.GradScaler`` (loss scaling), whose state is checkpointed.

Active with ``--amp``, ``--plugin amp``, ``plugins = ["amp"]`` or ``[amp] enabled = true``.
``dtype = "auto"`` is float16 on CUDA and bfloat16 elsewhere (falling back to the other one, with a log
line, where the device cannot autocast to it); an explicit dtype the device cannot use is an error.
A step whose gradients hold inf/NaN is skipped and counted; the learning-rate schedule does not
advance on a skipped step; ``max_consecutive_skips`` skipped steps in a row stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posecore import hookimpl
from posecore.config import Key, Section
from posecore.errors import ConfigError, PosecoreError


@hookimpl
def config_schema() -> dict[str, Any]:
    return {"amp": Section({
        "enabled": Key(bool, False, "Turn on mixed precision (`--amp` is the shorthand)."),
        "dtype": Key(str, "auto", "Autocast dtype: `auto` is float16 on CUDA, bfloat16 elsewhere.",
                     choices=("auto", "float16", "bfloat16")),
        "loss_scale": Key((str, float), "dynamic", "float16 only: `\"dynamic\"` loss scaling, or a fixed scale "
                                                   "(a number > 0)."),
        "init_scale": Key(float, 65536.0, "Dynamic scaling: the first loss scale.", min=1.0),
        "growth_interval": Key(int, 2000, "Dynamic scaling: steps without inf/NaN before the scale doubles.",
                               min=1),
        "max_consecutive_skips": Key(int, 50, "Stop the run after this many skipped (inf/NaN) steps in a row.",
                                     min=1),
    }, "Automatic mixed precision (posecore-amp).")}


@hookimpl
def configure(config: dict[str, Any]) -> None:
    scale = config["amp"]["loss_scale"]
    if isinstance(scale, str) and scale != "dynamic" or isinstance(scale, float) and scale <= 0:
        raise ConfigError(f"amp.loss_scale is {scale!r}; use \"dynamic\" or a number > 0")


@dataclass
class AmpState:
    """The per-run state: dtype, scaler (disabled for bfloat16) and skipped-step counters."""

    dtype: Any
    scaler: Any
    fixed_scale: float | None
    skipped: int = 0
    in_a_row: int = 0


@hookimpl
def before_build(run: Any) -> None:
    import torch

    options = run.config["amp"]
    dtype = _usable_dtype(run, options["dtype"])
    fixed = options["loss_scale"] if isinstance(options["loss_scale"], float) else None
    scaler = torch.amp.GradScaler(run.device.type, init_scale=fixed or options["init_scale"],
                                  growth_interval=options["growth_interval"], enabled=dtype == torch.float16)
    run.plugin_data["amp"] = AmpState(dtype, scaler, fixed)
    scaling = "" if not scaler.is_enabled() else f", loss scale {fixed:g} (fixed)" if fixed else ", dynamic loss scaling"
    run.log.info("amp: autocast to %s on %s%s", str(dtype).replace("torch.", ""), run.device.type, scaling)


def _usable_dtype(run: Any, name: str) -> Any:
    import torch

    wanted = ["float16", "bfloat16"] if run.device.type == "cuda" else ["bfloat16", "float16"]
    if name != "auto":
        wanted = [name]
    for candidate in wanted:
        if _autocasts_to(run.device, getattr(torch, candidate)):
            if candidate != wanted[0]:
                run.log.info("amp: %s autocast is not available on %s; using %s", wanted[0], run.device, candidate)
            return getattr(torch, candidate)
    raise ConfigError(f"amp.dtype {name}: {run.device} cannot autocast to {' or '.join(wanted)}; "
                      f"use another amp.dtype or train without --amp")


def _autocasts_to(device: Any, dtype: Any) -> bool:
    """Whether autocast really computes in ``dtype`` here (torch only warns and disables itself if not)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type=device.type, dtype=dtype):
                probe = torch.ones(2, 2, device=device)
                return torch.mm(probe, probe).dtype == dtype
        except RuntimeError:
            return False


@hookimpl
def forward_context(run: Any) -> Any:
    import torch

    return torch.autocast(device_type=run.device.type, dtype=run.plugin_data["amp"].dtype)


@hookimpl
def backward_step(run: Any, loss: Any) -> bool:
    state: AmpState = run.plugin_data["amp"]
    scaler = state.scaler
    run.optimizer.zero_grad(set_to_none=True)
    if not scaler.is_enabled():  # bfloat16 keeps float32's range: no scaling, nothing to skip
        loss.backward()
        run.clip_gradients()
        run.optimizer.step()
        run.optimizer_steps += 1
        return True
    scaler.scale(loss).backward()
    scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
    run.clip_gradients()
    # GradScaler syncs here anyway (its step reads the same flags with .item()).
    found_inf = sum(v.item() for v in scaler._found_inf_per_device(run.optimizer).values())
    scaler.step(run.optimizer)
    scaler.update(state.fixed_scale)
    if not found_inf:
        run.optimizer_steps += 1
        state.in_a_row = 0
        return True
    state.skipped += 1
    state.in_a_row += 1
    if state.in_a_row >= run.config["amp"]["max_consecutive_skips"]:
        raise PosecoreError(
            f"amp: {state.in_a_row} optimizer steps in a row had inf/NaN gradients and were skipped (up to "
            f"iteration {run.iteration + 1}); lower optim.lr, set optim.clip_grad_norm, or train without --amp")
    return True


@hookimpl
def collect_scalars(run: Any) -> dict[str, float]:
    state: AmpState = run.plugin_data["amp"]
    scalars = {"amp/skipped_steps": float(state.skipped)}
    if state.scaler.is_enabled():
        scalars["amp/loss_scale"] = state.scaler.get_scale()
    return scalars


@hookimpl
def save_state(run: Any) -> dict[str, Any]:
    state: AmpState = run.plugin_data["amp"]
    return {"scaler": state.scaler.state_dict(), "skipped": state.skipped, "in_a_row": state.in_a_row}


@hookimpl
def load_state(run: Any, state: dict[str, Any]) -> None:
    own: AmpState = run.plugin_data["amp"]
    own.skipped, own.in_a_row = state["skipped"], state["in_a_row"]
    if own.scaler.is_enabled() and state["scaler"]:
        own.scaler.load_state_dict(state["scaler"])
    elif own.scaler.is_enabled():
        run.log.info("amp: the checkpoint has no loss-scaler state (it ran in bfloat16); starting a fresh scaler")
