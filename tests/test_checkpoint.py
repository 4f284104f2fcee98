"""Checkpoints: atomic writes, refusing pickles that would run code, clear errors for bad files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from helpers import posecore
from posecore import checkpoint
from posecore.errors import CheckpointError


def test_crash_between_write_and_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "iter_2.pth"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}})

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(path, {"model": {"w": torch.zeros(3)}})
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_2.pth", "iter_2.pth.xxh128"]  # no temporary file


def test_save_never_exposes_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "iter_4.pth"
    seen = []
    real_replace = os.replace

    def watch(src, dst):
        seen.append((Path(dst).name, Path(dst).exists()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watch)
    checkpoint.save(path, {"model": {"w": torch.ones(1000)}})
    # the final names appear only by the rename of a complete file, the checksum after the checkpoint
    assert seen == [("iter_4.pth", False), ("iter_4.pth.xxh128", False)]


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def _pickle_checkpoint(path: Path, marker: Path) -> None:
    _Exploit.marker = marker
    torch.save({"model": {}, "payload": _Exploit()}, path)


def test_crafted_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path, tiny_config):
    evil, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    _pickle_checkpoint(evil, marker)
    with pytest.raises(CheckpointError, match="pickled Python objects, which posecore refuses to load"):
        checkpoint.load(evil)
    result = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "wd"),
                      "--cfg-options", f'load_from="{evil}"')
    assert result.returncode == 2
    assert "refuses to load" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "not a loadable checkpoint"),
    (b"hello, not a checkpoint", "not a loadable checkpoint"),
    (pickle.dumps([1, 2, 3]), "not a loadable checkpoint"),
])
def test_non_checkpoints_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "iter_2.pth"
    checkpoint.save(path, {"model": {"w": torch.ones(10000)}})
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"{path}: checksum mismatch with iter_2.pth.xxh128: the file is "
                                              f"corrupt or was cut short"):
        checkpoint.load(path)
    checkpoint.checksum_path(path).unlink()  # as an older version or a copy by hand would leave it
    with pytest.raises(CheckpointError, match=f"{path}: not a loadable checkpoint"):
        checkpoint.load(path)


def test_checksum_file_is_in_xxhsum_format(tmp_path):
    import xxhash

    path = tmp_path / "iter_2.pth"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}})
    digest = xxhash.xxh3_128(path.read_bytes()).hexdigest()
    assert checkpoint.checksum_path(path).read_text() == f"{digest}  iter_2.pth\n"
    flipped = bytearray(path.read_bytes())
    flipped[len(flipped) // 2] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)


def test_weights_of_another_model_list_the_mismatched_keys(tmp_path, tiny_config):
    first = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    result = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "b"), "--cfg-options",
                      f'load_from="{tmp_path / "a" / "iter_4.pth"}"', "model.stage_channels=[8, 32]")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("posecore: error: ") and "weights do not fit this model (shape differs: " in last
    assert "Traceback" not in result.stderr


def test_load_from_initialises_weights_and_starts_at_zero(tmp_path, tiny_config):
    first = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "a"), "--cfg-options",
                     "train.max_iters=2", "checkpoint.interval=2")
    assert first.returncode == 0, first.stderr
    second = posecore("train", str(tiny_config), "--work-dir", str(tmp_path / "b"), "--cfg-options",
                      f'load_from="{tmp_path / "a" / "iter_2.pth"}"', "train.max_iters=2", "train.val_interval=0")
    assert second.returncode == 0, second.stderr
    assert "loaded model weights from" in second.stderr
    state = torch.load(tmp_path / "b" / "iter_2.pth", weights_only=True)
    assert state["loop"]["iteration"] == 2 and state["loop"]["optimizer_steps"] == 2
