"""posecore-amp: automatic mixed precision. Forward and loss under ``torch.autocast``; with float16,
backward and step through ``torch.amp.GradScaler`` (dynamic loss scaling), whose state is checkpointed.

``dtype = "auto"`` picks float16 on CUDA and bfloat16 elsewhere. A step the scaler skips (inf/NaN
gradients) does not advance the learning-rate schedule.
"""

from __future__ import annotations

from typing import Any

from posecore import hookimpl
from posecore.config import Key, Section
from posecore.errors import ConfigError

@hookimpl
def config_schema() -> dict[str, Any]:
    return {"amp": Section({
        "enabled": Key(bool, False, "Turn on mixed precision (`--amp` is the shorthand)."),
        "dtype": Key(str, "auto", "Autocast dtype: `auto` is float16 on CUDA, bfloat16 elsewhere.",
                     choices=("auto", "float16", "bfloat16")),
    }, "Automatic mixed precision (posecore-amp).")}


def autocast_dtype(run: Any) -> Any:
    import torch

    name = run.config.get("amp", {}).get("dtype", "auto")
    if name == "auto":
        return torch.float16 if run.device.type == "cuda" else torch.bfloat16
    if name == "float16" and run.device.type not in ("cuda", "cpu", "mps"):
        raise ConfigError(f"amp.dtype float16 is not supported on device {run.device}; use bfloat16")
    return getattr(torch, name)


@hookimpl
def before_build(run: Any) -> None:
    import torch

    dtype = autocast_dtype(run)
    run.plugin_data["amp"] = torch.amp.GradScaler(run.device.type, enabled=dtype == torch.float16)
    run.log.info("amp: autocast %s on %s%s", dtype, run.device.type,
                 ", dynamic loss scaling" if dtype == torch.float16 else "")


@hookimpl
def forward_context(run: Any) -> Any:
    import torch

    return torch.autocast(device_type=run.device.type, dtype=autocast_dtype(run))


@hookimpl
def backward_step(run: Any, loss: Any) -> bool:
    scaler = run.plugin_data["amp"]
    run.optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
    run.clip_gradients()
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(run.optimizer)
    scaler.update()
    if before is None or scaler.get_scale() >= before:
        run.optimizer_steps += 1
    return True


@hookimpl
def collect_scalars(run: Any) -> dict[str, float] | None:
    scaler = run.plugin_data["amp"]
    return {"loss_scale": scaler.get_scale()} if scaler.is_enabled() else None


@hookimpl
def save_state(run: Any) -> dict[str, Any]:
    return {"scaler": run.plugin_data["amp"].state_dict()}


@hookimpl
def load_state(run: Any, state: dict[str, Any]) -> None:
    if state.get("scaler"):
        run.plugin_data["amp"].load_state_dict(state["scaler"])
