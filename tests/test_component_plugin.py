"""examples/component-plugin: pip-install posecore-example-components for real and drive its model, dataset and
metric types through the CLI (train, exact resume, test, predict, plugins, reference, errors), run its own tests
against the installed copy, and train its example config in a fresh venv holding only the core and the plugin."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
from packaging.requirements import Requirement

from helpers import REPO, posecore
from interruptions import assert_same_run, install_interrupter, interrupt_env
from posecore import checkpoint
from posecore.pose.skeleton import COCO17

EXAMPLE = REPO / "examples" / "component-plugin"
GUIDE = REPO / "docs" / "writing-a-plugin.md"
TYPES = {"model": ["TransformersHeatmapNet"], "dataset": ["KeypointFolder"], "metric": ["KeypointError"]}
# The example config, made tiny: a model of about 9,000 parameters on 32x32 crops, 8 iterations.
TINY = """extends = "example.toml"
device = "cpu"
codec = {input_size = [32, 32], heatmap_size = [16, 16]}
model = {hidden_sizes = [8, 16], deconv_channels = [8, 8]}
train_dataloader = {batch_size = 4}
val_dataloader = {batch_size = 8}
scheduler = {warmup_iters = 2}
train = {max_iters = 8, val_interval = 4, log_interval = 2}
checkpoint = {interval = 4}
"""
SEEDED = ["randomness.seed=5"]


def load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_parallel(*calls: tuple) -> list[subprocess.CompletedProcess]:
    """``posecore(*args, **kwargs)`` for each ``(args, kwargs)`` at once: the runs are independent."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: posecore(*call[0], **call[1]), calls))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the example with its data (12 training and 8 validation images of 64x64) and ``tiny.toml``."""
    # pip builds in the source tree (build/, *.egg-info): use a copy, never the checkout.
    source = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("components") / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "data"))
    make_data = load_module("make_data", source / "make_data.py")
    make_data.write_folder(source / "data" / "train", 12, 64, seed=0)
    make_data.write_folder(source / "data" / "val", 8, 64, seed=1)
    (source / "tiny.toml").write_text(TINY, encoding="utf-8")
    return source


@pytest.fixture(scope="module")
def site(source) -> Path:
    """The example distribution installed into a folder of its own, for PYTHONPATH."""
    target = source.parent / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return target


@pytest.fixture(scope="module")
def runs(source, site, tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The CLI runs the next two tests check, in one folder: ``straight`` (8 iterations) at once with ``killed`` (in
    iteration 6); then ``resumed`` (that run from its checkpoint of iteration 4, in its second epoch of 3 batches) at
    once with ``test`` and ``predict`` on the straight run's last checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    paths = [site, install_interrupter(root / "interrupter")]
    config, weights = str(source / "tiny.toml"), str(root / "straight" / "iter_8.pth")

    def run(*args: str, env: dict[str, str] | None = None) -> tuple:
        return args, {"pythonpath": paths, "env": {"OMP_NUM_THREADS": "1", **(env or {})}}

    def train(work_dir: str, *options: str, env: dict[str, str] | None = None) -> tuple:
        return run("train", config, "--work-dir", str(root / work_dir), "--plugin", "interrupt", "--cfg-options",
                   *SEEDED, *options, env=env)

    straight, killed = in_parallel(train("straight"), train("resumed", env=interrupt_env(6)))
    assert straight.returncode == 0, straight.stderr
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed, tested, predicted = in_parallel(
        train("resumed", "resume=true"),
        run("test", config, "--checkpoint", weights, "--work-dir", str(root / "test")),
        run("predict", str(source / "data" / "val" / "img_0003.jpg"), "--config", config, "--checkpoint", weights,
            "--out", str(root / "predicted"), "--work-dir", str(root / "predict")))
    return root, {"resumed": resumed, "test": tested, "predict": predicted}


@pytest.mark.slow
def test_trains_checkpoints_and_resumes_exactly_with_the_example_types(runs):
    root, done = runs
    assert done["resumed"].returncode == 0, done["resumed"].stderr
    assert f"resumed from {root / 'resumed' / 'iter_4.pth'} at iteration 4" in done["resumed"].stderr
    assert "example_components-0.1.0" in done["resumed"].stderr.splitlines()[0]
    state = checkpoint.load(root / "straight" / "iter_8.pth")
    assert "backbone.encoder.stages.1.layers.0.shortcut.convolution.weight" in state["model"]  # transformers' ResNet
    assert state["config"].count('type = "KeypointFolder"') == 2
    assert_same_run(root / "straight", root / "resumed")


@pytest.mark.slow
def test_test_and_predict_use_the_example_types(runs):
    root, done = runs
    assert done["test"].returncode == 0, done["test"].stderr
    (run_dir,) = (root / "straight").glob("*/vis_data")
    scalars = [json.loads(line) for line in (run_dir / "scalars.json").read_text().splitlines()]
    validated = [line["val/NME"] for line in scalars if "val/NME" in line]
    assert len(validated) == 2 and done["test"].stdout.splitlines() == ["metric  value", f"NME  {validated[-1]:.4f}"]
    (results,) = (root / "test").glob("*/predictions.json")
    persons = json.loads(results.read_text())
    assert [person["image_id"] for person in persons] == list(range(8))
    assert all(len(person["keypoints"]) == 17 and 0 < person["error"] < 2 for person in persons)
    assert done["predict"].returncode == 0, done["predict"].stderr
    summary = json.loads((root / "predicted" / "keypoints.json").read_text())
    assert summary["keypoint_names"] == list(COCO17.names)
    ((person,),) = [image["persons"] for image in summary["images"]]
    assert len(person["keypoints"]) == 17 and (root / "predicted" / "img_0003.jpg").is_file()


def test_plugins_lists_its_types_and_the_reference_their_options(site):
    listed, table, reference = in_parallel((("plugins", "--json"), {"pythonpath": [site]}),
                                           (("plugins",), {"pythonpath": [site]}),
                                           (("config", "--reference"), {"pythonpath": [site]}))
    assert listed.returncode == 0, listed.stderr
    (row,) = [row for row in json.loads(listed.stdout) if row["name"] == "example_components"]
    assert row == {"name": "example_components", "distribution": "posecore-example-components", "version": "0.1.0",
                   "hooks": ["dataset_types", "metric_types", "model_types"], "types": TYPES,
                   "active": None}
    (line,) = [line for line in table.stdout.splitlines() if line.startswith("example_components ")]
    assert " ".join(line.split()) in [" ".join(text.split()) for text in GUIDE.read_text(encoding="utf-8").splitlines()]
    assert reference.returncode == 0, reference.stderr
    lines = reference.stdout.splitlines()
    for place, type_name, key in [("model", "TransformersHeatmapNet", "pretrained"),
                                  ("train_dataloader.dataset", "KeypointFolder", "box_padding"),
                                  ("val_evaluator", "KeypointError", "per_keypoint")]:
        assert any(line.startswith(f"| `{place}.` ({type_name}) `{key}` |") for line in lines), (place, key)
        assert any(line.startswith(f"| `{place}.type` |") and f"`{type_name}` (example_components)" in line
                   for line in lines), place


def test_the_guide_quotes_the_example_as_it_is():
    text = GUIDE.read_text(encoding="utf-8")
    excerpts = re.findall(r"<!-- excerpt: (\S+) -->\n```[a-z]*\n(.*?)```\n", text, re.DOTALL)
    assert [path for path, _ in excerpts] == [f"examples/component-plugin/posecore_example_components/{name}"
                                              for name in ("__init__.py", "components.py")]
    for path, excerpt in excerpts:
        assert excerpt in (REPO / path).read_text(encoding="utf-8"), f"the guide's excerpt of {path} is not in it"


def test_a_bad_dataset_file_is_exit_2_and_one_line_naming_it(source, site, tmp_path):
    shutil.copy(source / "data" / "val" / "img_0000.jpg", tmp_path / "img_0000.jpg")
    (tmp_path / "img_0000.json").write_text('{"keypoints": [[10, 12, 2]], "box": [0, 0, 20, 30]}')
    result = posecore("train", str(source / "tiny.toml"), "--work-dir", str(tmp_path / "wd"), "--cfg-options",
                      f"val_dataloader.dataset.folder={tmp_path}", pythonpath=[site])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"posecore: error: {tmp_path / 'img_0000.json'}: person 0: needs 'keypoints', 17 [x, y, v] number triples "
        f"(one per keypoint of the layout); fix the file, or set the dataset's keypoints (or keypoint_names) to match")


def test_a_type_nobody_provides_is_exit_2_and_lists_the_installed_ones(source, site):
    result = posecore("config", str(source / "tiny.toml"), "--cfg-options", "train_dataloader.dataset.type=ImageFolder",
                      pythonpath=[site])
    assert result.returncode == 2
    assert result.stderr == ("posecore: error: --cfg-options: unknown train_dataloader.dataset.type 'ImageFolder'; "
                             "installed: CocoKeypoints (core), KeypointFolder (example_components), SyntheticPoses "
                             "(core)\n")


@pytest.fixture
def installed(site, monkeypatch) -> Iterator[ModuleType]:
    """The installed copy of the plugin package, imported in this process (and forgotten afterwards)."""
    def forget() -> None:
        for name in [name for name in sys.modules if name.split(".")[0] == "posecore_example_components"]:
            del sys.modules[name]

    forget()
    monkeypatch.syspath_prepend(str(site))
    yield importlib.import_module("posecore_example_components")
    forget()


@pytest.mark.slow
def test_the_example_tests_pass_with_the_installed_package(installed, site, tmp_path):
    example = load_module("example_test_components", EXAMPLE / "tests" / "test_components.py")
    for module in (example.posecore_example_components, sys.modules[example.KeypointFolder.__module__]):
        assert Path(module.__file__).is_relative_to(site)  # the example's tests run against the installed copy
    tests = {name: test for name, test in vars(example).items() if name.startswith("test_")}
    assert len(tests) == 6
    for name, test in tests.items():  # their assertions are the test
        if "tmp_path" in inspect.signature(test).parameters:
            (tmp_path / name).mkdir()
            test(tmp_path / name)
        else:
            test()


def borrowed_dependencies(folder: Path, requirements: list[str]) -> Path:
    """Links in ``folder`` to the packages (and metadata) of every distribution ``requirements`` need, here."""
    folder.mkdir()
    seen, todo = set(), list(requirements)
    while todo:
        requirement = Requirement(todo.pop())
        if requirement.name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(requirement.name)
        distribution = importlib.metadata.distribution(requirement.name)
        todo += distribution.requires or []
        for top in {file.parts[0] for file in distribution.files or []} - {"..", "__pycache__"}:
            if not top.endswith(".pth") and not (folder / top).exists():
                (folder / top).symlink_to(distribution.locate_file(top))
    return folder


@pytest.mark.slow
def test_a_venv_with_only_the_core_and_the_plugin_trains_the_example(source, tmp_path):
    core = tmp_path / "core-source"  # building in the checkout would leave build/ and *.egg-info there
    core.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, core / name)
    shutil.copytree(REPO / "core", core / "core", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    offline = ["--quiet", "--no-deps", "--no-index"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", *offline, "--no-build-isolation", "--wheel-dir",
                    str(tmp_path / "dist"), str(core), str(source)], check=True, capture_output=True, timeout=300)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", *offline,
                    *map(str, (tmp_path / "dist").glob("*.whl"))], check=True, capture_output=True, timeout=300)
    # The dependencies the core and the plugin declare come from this venv; posecore entry points only from fresh.
    requirements = importlib.metadata.requires("posecore") + ["transformers"]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(f"{borrowed_dependencies(tmp_path / 'borrowed', requirements)}\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "POSECORE_DEBUG")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    where = run("-c", "import posecore, posecore_example_components as p; print(posecore.__file__, p.__file__)")
    assert all(Path(path).is_relative_to(fresh) for path in where.stdout.split()), where.stdout + where.stderr
    listed = run("-m", "posecore", "plugins", "--json")
    assert [(row["name"], row["types"]) for row in json.loads(listed.stdout)] == [("example_components", TYPES)]
    trained = run("-m", "posecore", "train", str(source / "example.toml"), "--work-dir", str(tmp_path / "wd"),
                  "--cfg-options", "train.max_iters=3", "train.val_interval=3", "checkpoint.interval=3",
                  "train_dataloader.batch_size=4", "val_dataloader.batch_size=8")
    assert trained.returncode == 0, trained.stderr
    assert trained.stderr.splitlines()[0].endswith("plugins: example_components-0.1.0")
    assert (tmp_path / "wd" / "iter_3.pth").is_file() and (tmp_path / "wd" / "best_NME_iter_3.pth").is_file()
