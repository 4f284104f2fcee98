"""``model.channels_last`` and ``model.compile``: checkpoints keep the eager model's keys, and resumed runs are
bitwise the uninterrupted ones.

The compiled runs here use torch.compile's ``aot_eager`` backend: Dynamo and AOTAutograd capture the training
step as TorchInductor gets it, without its C++ kernels, whose cold build takes about 40 s on two cores.
That inductor-compiled runs resume bitwise too is measured by ``bench/compute.py --resume-check``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import posecore_resume
import posecore_seed
import pytest
import torch

from interruptions import assert_same_checkpoint
from posecore import checkpoint
from posecore.errors import ConfigError
from posecore.testing import run_training

PLUGINS = {"seed": posecore_seed, "resume": posecore_resume}
OPTIONS = ["randomness.seed=5", "model.dropout=0.2"]  # dropout: the generators' states matter too


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the ``aot_eager`` backend (see the module's docstring)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))


def train_straight_and_resumed(tmp_path: Path, options: list[str]) -> tuple[Path, Path]:
    """A 4-iteration run, and one resumed from its iteration-2 checkpoint; their work dirs."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(straight, plugins=PLUGINS, cfg_options=[*OPTIONS, *options])
    resumed_run = run_training(resumed, plugins=PLUGINS, cfg_options=[*OPTIONS, *options, "resume=true",
                                                                        f"load_from={straight / 'iter_2.pth'}"])
    assert resumed_run.count("backward_step") == 2, "the resumed run did not continue from iteration 2"
    return straight, resumed


def eager_keys(tmp_path: Path) -> list[str]:
    run_training(tmp_path / "eager", plugins=PLUGINS, cfg_options=[*OPTIONS, "train.max_iters=2"])
    return list(checkpoint.load(tmp_path / "eager" / "iter_2.pth")["model"])


@pytest.mark.parametrize("option", ["model.channels_last=true", "model.compile=true"])
def test_an_option_keeps_the_checkpoint_keys_and_resumes_bitwise(tmp_path, aot_eager, option):
    straight, resumed = train_straight_and_resumed(tmp_path, [option])
    state = checkpoint.load(straight / "iter_4.pth")
    assert list(state["model"]) == eager_keys(tmp_path)
    assert_same_checkpoint(straight / "iter_4.pth", resumed / "iter_4.pth")


def test_channels_last_trains_in_that_format_and_compile_wraps_the_training_module(tmp_path, aot_eager):
    seen = []
    recording = run_training(tmp_path, plugins=PLUGINS, cfg_options=[
        *OPTIONS, "model.channels_last=true", "model.compile=true", "train.max_iters=1"])
    run = recording.run
    run.model.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    run.model(torch.zeros(2, 3, 32, 32))
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    convolutions = [m.weight for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    assert run.train_model is not run.model and run.train_model._orig_mod is run.model


def test_compile_without_a_cpp_compiler_is_a_one_line_config_error(tmp_path, monkeypatch):
    from torch._inductor import cpp_builder, exc

    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ConfigError, match=r"^model\.compile = true needs a C\+\+ compiler on a CPU .*; install g\+\+ "
                                          r"\(or set CXX to one\), or set model\.compile = false$"):
        run_training(tmp_path, cfg_options=["model.compile=true"])
