"""posecore-resume: --resume continues from the latest checkpoint or a given one; load_from alone is weights only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import posecore_resume
import posecore_seed
import pytest
import torch

from helpers import posecore, write_tiny_config
from posecore import hookimpl
from posecore.config import loads
from posecore.errors import CheckpointError
from posecore.testing import TINY_CONFIG, run_training


@pytest.fixture
def resume_config(tmp_path: Path) -> Path:
    return write_tiny_config(tmp_path)


def train(config: Path, work_dir: Path, *args: str):
    return posecore("train", str(config), "--work-dir", str(work_dir), *args)


def run_dirs(work_dir: Path) -> list[Path]:
    return sorted(p for p in work_dir.iterdir() if p.is_dir())


def log_of(run_dir: Path) -> str:
    return (run_dir / f"{run_dir.name}.log").read_text(encoding="utf-8")


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(resume_config, tmp_path):
    work_dir = tmp_path / "wd"
    result = train(resume_config, work_dir, "--resume")
    assert result.returncode == 0, result.stderr
    assert "plugins: resume-0.1.0" in result.stderr
    said = [line for line in result.stderr.splitlines() if "resume:" in line]
    assert len(said) == 1 and said[0].endswith(f"resume: no checkpoint in {work_dir}; starting fresh")
    assert "Iter(train) [2/4]" in result.stderr and "resumed from" not in result.stderr
    assert torch.load(work_dir / "iter_4.pth", weights_only=True)["loop"]["iteration"] == 4


def test_resume_continues_from_the_latest_checkpoint(resume_config, tmp_path):
    work_dir = tmp_path / "wd"
    first = train(resume_config, work_dir, "--cfg-options", "train.max_iters=2")
    assert first.returncode == 0, first.stderr
    assert [p.name for p in work_dir.glob("iter_*.pth")] == ["iter_2.pth"]

    second = train(resume_config, work_dir, "--resume", "--cfg-options", "train.max_iters=4")
    assert second.returncode == 0, second.stderr
    assert re.search(r"resumed from \S*iter_2\.pth at iteration 2$", second.stderr, re.MULTILINE)
    log = log_of(run_dirs(work_dir)[-1])
    assert "Iter(train) [2/4]" not in log and "Iter(train) [4/4]" in log
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    assert state["loop"]["iteration"] == 4 and state["loop"]["optimizer_steps"] == 4
    assert state["loop"]["epoch_batch"] == 4  # the data position carried on, no batch seen twice


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint not found"),
    ("this is not a checkpoint\n", "not a loadable checkpoint"),
])
def test_resume_from_a_bad_path_is_one_line_and_exit_2(resume_config, tmp_path, content, message):
    path = tmp_path / "given.pth"
    if content is not None:
        path.write_text(content)
    result = train(resume_config, tmp_path / "wd", "--resume", str(path))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"posecore: error: {path}: {message}")
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "wd").glob("iter_*.pth"))


def resume_from(path: Path) -> list[str]:
    return ["resume=true", f"load_from={json.dumps(str(path))}"]


def test_resumed_run_without_dropout_is_bitwise_identical_to_an_uninterrupted_one(tmp_path):
    assert_resume_is_bitwise_identical(tmp_path, dropout=0.0)


def test_resumed_run_with_dropout_is_bitwise_identical_to_an_uninterrupted_one(tmp_path):
    assert_resume_is_bitwise_identical(tmp_path, dropout=0.5)


def assert_resume_is_bitwise_identical(tmp_path: Path, dropout: float) -> None:
    plugins = {"seed": posecore_seed, "resume": posecore_resume}
    options = ["randomness.seed=5", f"model.dropout={dropout}"]  # with dropout the torch generator matters
    run_training(tmp_path / "straight", plugins=plugins, cfg_options=options)
    run_training(tmp_path / "resumed", plugins=plugins,
                 cfg_options=options + resume_from(tmp_path / "straight" / "iter_2.pth"))
    straight = torch.load(tmp_path / "straight" / "iter_4.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "iter_4.pth", weights_only=True)
    assert straight["loop"] == resumed["loop"]
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])


def test_a_checkpoint_that_does_not_load_is_skipped_for_the_previous_one(tmp_path):
    run_training(tmp_path, plugins={"resume": posecore_resume})
    (tmp_path / "iter_4.pth").write_bytes(b"truncated")
    recording = run_training(tmp_path, plugins={"resume": posecore_resume},
                             cfg_options=["resume=true", "train.max_iters=6"])
    log = log_of(recording.run.run_dir)
    assert f"resume: skipping {(tmp_path / 'iter_4.pth').resolve()}: checksum mismatch" in log
    assert f"resumed from {tmp_path / 'iter_2.pth'} at iteration 2" in log
    assert recording.count("backward_step") == 4


def test_load_from_alone_loads_weights_and_starts_at_zero(tmp_path):
    run_training(tmp_path / "a", plugins={"resume": posecore_resume}, cfg_options=["train.max_iters=2"])
    source = tmp_path / "a" / "iter_2.pth"
    # With a zero learning rate the parameters stay exactly as loaded (BatchNorm statistics still move).
    recording = run_training(tmp_path / "b", plugins={"resume": posecore_resume},
                             cfg_options=[f"load_from={json.dumps(str(source))}", "optim.lr=0"])
    assert [p.name for p in recording.run.plugins.active] == ["core"]  # load_from does not activate resume
    log = log_of(recording.run.run_dir)
    assert f"loaded model weights from {source}" in log and "resumed" not in log
    assert "Iter(train) [2/4]" in log
    loaded = torch.load(source, weights_only=True)
    trained = torch.load(tmp_path / "b" / "iter_4.pth", weights_only=True)
    assert trained["loop"]["iteration"] == 4 and trained["loop"]["optimizer_steps"] == 4
    assert trained["optimizer"]["state"][0]["step"] == 4  # a fresh optimizer: 4 steps, not 2 + 4
    parameters = [name for name, _ in recording.run.model.named_parameters()]
    assert all(torch.equal(loaded["model"][k], trained["model"][k]) for k in parameters)


def test_a_resumed_run_records_the_seed_it_continues_with(tmp_path):
    plugins = {"seed": posecore_seed, "resume": posecore_resume}
    first = run_training(tmp_path, plugins=plugins, cfg_options=["plugins=['seed']", "train.max_iters=2"])
    second = run_training(tmp_path, plugins=plugins, cfg_options=["plugins=['seed']", "resume=true"])
    assert second.run.seed == first.run.seed
    recorded = loads((second.run.vis_dir / "config.toml").read_text())
    assert recorded["randomness"]["seed"] == first.run.seed


def test_last_checkpoint_pointing_at_a_missing_file_falls_back_to_the_newest(tmp_path):
    run_training(tmp_path, plugins={"resume": posecore_resume})
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_99.pth"))
    recording = run_training(tmp_path, plugins={"resume": posecore_resume},
                             cfg_options=["resume=true", "train.max_iters=6"])
    log = log_of(recording.run.run_dir)
    assert f"resume: skipping {tmp_path / 'iter_99.pth'}: checkpoint not found" in log
    assert f"resumed from {tmp_path / 'iter_4.pth'} at iteration 4" in log


def test_resume_true_with_load_from_in_toml_continues_from_that_file(tmp_path):
    run_training(tmp_path / "a", plugins={"resume": posecore_resume})
    source = tmp_path / "a" / "iter_2.pth"
    recording = run_training(tmp_path / "b", plugins={"resume": posecore_resume},
                             cfg_options=["resume=true", f"load_from={json.dumps(str(source))}"])
    assert f"resumed from {source} at iteration 2" in log_of(recording.run.run_dir)
    assert recording.count("backward_step") == 2


class CountLoads:
    """Counts the samples the training data source loads (the sampler must skip, not load, on resume)."""

    loaded: list[int] = []

    @hookimpl
    def before_train(self, run):
        source = run.train_loader.dataset.source
        real_load = source.load

        def load(index):
            CountLoads.loaded.append(index)
            return real_load(index)

        source.load = load


def test_resuming_mid_epoch_loads_none_of_the_skipped_samples(tmp_path):
    run_training(tmp_path, plugins={"resume": posecore_resume}, cfg_options=["train.max_iters=3",
                                                                             "checkpoint.interval=3"])
    CountLoads.loaded = []
    run_training(tmp_path, plugins={"resume": posecore_resume, "count": CountLoads()},
                 cfg_options=["resume=true", "plugins=['count']", "train.max_iters=5"])
    assert len(CountLoads.loaded) == 2 * TINY_CONFIG["train_dataloader"]["batch_size"]  # iterations 4 and 5 only


def test_init_weights_start_a_fresh_run_but_are_not_reapplied_on_resume(tmp_path):
    run_training(tmp_path / "pretrained")
    weights = tmp_path / "backbone.pt"
    torch.save(torch.load(tmp_path / "pretrained" / "iter_4.pth", weights_only=True)["model"], weights)
    options = [f"model.init_weights={json.dumps(str(weights))}", "train.max_iters=2"]
    fresh = run_training(tmp_path / "run", plugins={"resume": posecore_resume}, cfg_options=options)
    assert f"loaded model weights from {weights}" in log_of(fresh.run.run_dir)
    resumed = run_training(tmp_path / "run", plugins={"resume": posecore_resume},
                           cfg_options=[*options[:1], "resume=true", "train.max_iters=4"])
    log = log_of(resumed.run.run_dir)
    assert "model.init_weights not applied: resumed from" in log and "loaded model weights" not in log


def test_load_from_a_different_head_needs_load_strict_false(tmp_path):
    run_training(tmp_path / "a")
    source = tmp_path / "a" / "iter_4.pth"
    other_head = [f"load_from={json.dumps(str(source))}", "model.deconv_channels=[4]"]
    with pytest.raises(CheckpointError, match=r"weights do not fit this model .*set load_strict = false"):
        run_training(tmp_path / "b", cfg_options=other_head)
    recording = run_training(tmp_path / "c", cfg_options=[*other_head, "load_strict=false"])
    log = log_of(recording.run.run_dir)
    assert "(load_strict = false: skipped head.0.weight" in log


def test_a_changed_config_is_logged_on_resume_and_its_learning_rate_applies(resume_config, tmp_path):
    work_dir = tmp_path / "wd"
    first = train(resume_config, work_dir, "--cfg-options", "train.max_iters=2", "scheduler.type=constant",
                  "scheduler.warmup_iters=0")
    assert first.returncode == 0, first.stderr
    second = train(resume_config, work_dir, "--resume", "--cfg-options", "train.max_iters=4",
                   "scheduler.type=constant", "scheduler.warmup_iters=0", "optim.lr=0.5", "optim.weight_decay=0.25")
    assert second.returncode == 0, second.stderr
    block = second.stderr[second.stderr.index("resume: this config differs"):]
    assert block.splitlines()[1:4] == ["  optim.lr: 0.002 -> 0.5", "  optim.weight_decay: 0.0001 -> 0.25",
                                       "  train.max_iters: 2 -> 4"]
    # The checkpoint brings the optimizer's moments; the learning rate and weight decay are this config's.
    state = torch.load(work_dir / "iter_4.pth", weights_only=True)
    (group,) = state["optimizer"]["param_groups"]
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (0.5, 0.5, 0.25)
    scalars = [json.loads(line) for line in (Path(state["vis_dir"]) / "scalars.json").read_text().splitlines()]
    assert [(row["step"], row["lr"]) for row in scalars if "lr" in row] == [(2, 0.002), (4, 0.5)]


def test_resuming_with_another_optimizer_type_is_refused(resume_config, tmp_path):
    work_dir = tmp_path / "wd"
    assert train(resume_config, work_dir, "--cfg-options", "train.max_iters=2").returncode == 0
    result = train(resume_config, work_dir, "--resume", "--cfg-options", "optim.type=SGD")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"posecore: error: {work_dir / 'iter_2.pth'}: cannot resume with optim.type AdamW -> SGD: its optimizer state "
        f"is another optimizer's; keep optim.type = \"AdamW\", or start from its weights with load_from (without "
        f"resume)")
