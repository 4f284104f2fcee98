"""The ``posecore`` command. Imports nothing heavy at module level, so ``--help`` is instant."""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

import click

from posecore import __version__
from posecore.errors import InputError, PosecoreError, StopRun

EXAMPLES = """
\b
Examples:
  posecore train examples/quickstart.toml
  posecore train run.toml --amp --cfg-options randomness.seed=2023 train.max_iters=500
  posecore train run.toml --resume                  # continue from the latest checkpoint
  posecore train run.toml --plugin no:tensorboard   # block an installed plugin
  posecore test run.toml --checkpoint work_dirs/run/iter_1000.pth
  posecore predict photo.jpg --config run.toml --checkpoint ckpt.pth --detector fasterrcnn_mobilenet_v3_large_fpn
  posecore config run.toml --cfg-options optim.lr=1e-3
  posecore config import td-hm_res50_8xb64-210e_coco-256x192.py --out res50.toml   # from an MMPose config
  posecore plugins --config run.toml
"""


class _Commands(click.Group):
    """posecore's commands, and ``posecore config import``: ``config`` takes a CONFIG argument, so its ``import`` is
    a command of its own that the word routes to (a config file named ``import`` is ``./import``)."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        if args[:2] == ["config", "import"]:
            return "config import", config_import, args[2:]
        return super().resolve_command(ctx, args)


@click.group(cls=_Commands, epilog=EXAMPLES)
@click.version_option(__version__, prog_name="posecore")
def cli() -> None:
    """posecore: train top-down heatmap pose models from TOML configs, extended by plugins.

    Exit codes: 0 success, 2 bad input (config, CLI, checkpoint, data), 1 other failures,
    128+N stopped by signal N after saving a checkpoint (130 Ctrl-C, 143 SIGTERM).
    """


def _config_options(command: Any) -> Any:
    """The options that shape a config, shared by train, config and plugins (they see the same config)."""
    options = [
        click.option("--cfg-options", "cfg_options", multiple=True, metavar="KEY=VALUE ...",
                     help="Override config keys, e.g. randomness.seed=2023 train.max_iters=500 "
                          "(several pairs after one flag; values parse as TOML, True/False/None too)."),
        click.option("--plugin", "plugins", multiple=True, metavar="NAME",
                     help="Activate an installed plugin; no:NAME blocks one. Repeatable."),
        click.option("--amp", is_flag=True, help="Automatic mixed precision (posecore-amp): amp.enabled=true."),
        click.option("--resume", is_flag=False, flag_value="auto", default=None, metavar="[PATH]",
                     help="Continue from the latest checkpoint in the work dir, or from PATH (posecore-resume)."),
        click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where checkpoints and run folders go (default: work_dirs/<config stem>)."),
    ]
    for option in options:
        command = option(command)
    return command


def _overrides(cfg_options: tuple[str, ...], work_dir: Path | None, amp: bool,
               resume: str | None) -> list[str | tuple[str, str]]:
    """``--cfg-options`` plus the shorthands, which are config keys too: one way to set each thing. A
    shorthand's override carries its flag, so that an error about its key names the flag the user typed."""
    overrides: list[str | tuple[str, str]] = list(cfg_options)
    if work_dir is not None:
        overrides.append((f"work_dir={json.dumps(str(work_dir))}", "--work-dir"))
    if amp:
        overrides.append(("amp.enabled=true", "--amp"))
    if resume is not None:
        overrides.append(("resume=true", "--resume"))
        if resume != "auto":
            overrides.append((f"load_from={json.dumps(resume)}", "--resume"))
    return overrides


@cli.command(epilog=EXAMPLES)
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_config_options
def train(config: Path, plugins: tuple[str, ...], cfg_options: tuple[str, ...], **shorthands: Any) -> None:
    """Train the model CONFIG describes."""
    from posecore.plugins import load_config
    from posecore.run import Run, train as run_training

    settings, plugin_set = load_config(config, _overrides(cfg_options, **shorthands), plugins)
    run = Run(settings, plugin_set)
    try:
        run_training(run)
    except PosecoreError:
        raise
    except Exception as err:
        where = plugin_set.blame(err)
        log = run.run_dir / f"{run.run_dir.name}.log"
        details = "POSECORE_DEBUG=1 shows the traceback"
        if run.rank != 0:
            details = f"rank {run.rank}; {details}"
        elif log.is_file():  # the run folder is made only once the inputs are checked
            details = f"traceback in {log}"
        raise PosecoreError(f"{where + ': ' if where else ''}{type(err).__name__}: {err} ({details})") from err


@cli.command(epilog=EXAMPLES)
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The checkpoint (or state_dict file) whose weights to evaluate.")
@_config_options
def test(config: Path, checkpoint: Path, plugins: tuple[str, ...], cfg_options: tuple[str, ...],
         **shorthands: Any) -> None:
    """Evaluate CHECKPOINT on CONFIG's validation data and print the metrics table."""
    from posecore.plugins import load_config
    from posecore.run import Run, evaluate

    settings, plugin_set = load_config(config, _overrides(cfg_options, **shorthands), plugins)
    run = Run(settings, plugin_set)
    metrics = evaluate(run, checkpoint)
    if run.rank != 0:  # under torchrun the table is rank 0's to print
        return
    width = max(len(name) for name in metrics)
    click.echo(f"{'metric'.ljust(width)}  value")
    for name, value in metrics.items():
        click.echo(f"{name.ljust(width)}  {value:.4f}")


@cli.command(epilog=EXAMPLES)
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The config the checkpoint was trained with (model, codec, keypoint layout).")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The checkpoint (or state_dict file) whose weights to use.")
@click.option("--boxes", type=click.Path(dir_okay=False, path_type=Path),
              help='JSON {"image.jpg": [[x, y, w, h(, score)], ...]} of person boxes; default: the whole image.')
@click.option("--detector", metavar="NAME[=PATH]",
              help="Find the persons with a torchvision detector (pip install 'posecore[detect]'): NAME is "
                   "fasterrcnn_mobilenet_v3_large_fpn (fast), fasterrcnn_mobilenet_v3_large_320_fpn (fastest), "
                   "fasterrcnn_resnet50_fpn_v2 (most accurate) or retinanet_resnet50_fpn_v2, with torchvision's "
                   "COCO weights from torch.hub's cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch; "
                   "downloaded there once). NAME=PATH uses your weights instead: PATH holds "
                   "torch.save(model.state_dict(), PATH) of torchvision.models.detection.NAME(num_classes=91). "
                   "Not with --boxes.")
@click.option("--det-score-thr", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --detector: keep person boxes scoring above this (MMPose's demos use 0.3; lower finds "
                   "more small or covered persons, and more false ones).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the drawn images and keypoints.json (default: predictions/ in the run folder).")
@click.option("--kpt-thr", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Draw keypoints scoring above this.")
@_config_options
def predict(images: tuple[Path, ...], config_path: Path, checkpoint: Path, boxes: Path | None, detector: str | None,
            det_score_thr: float, out: Path | None, kpt_thr: float, plugins: tuple[str, ...],
            cfg_options: tuple[str, ...], **shorthands: Any) -> None:
    """Predict the poses in IMAGES: write them drawn, and keypoints.json.

    Top-down pose needs person boxes: give --detector (or --boxes); without them each whole image is one person.
    """
    from posecore.plugins import load_config
    from posecore.predict import predict_images
    from posecore.run import Run

    settings, plugin_set = load_config(config_path, _overrides(cfg_options, **shorthands), plugins)
    folder = predict_images(Run(settings, plugin_set), images, checkpoint, boxes, out, kpt_thr, detector,
                            det_score_thr)
    click.echo(f"{len(images)} image(s) -> {folder}")


@cli.command(epilog=EXAMPLES)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reference", is_flag=True, help="Print the Markdown reference of every key instead.")
@click.option("--explain", is_flag=True, help="Print each key with where its value came from: file and line, base "
                                               "file, flag, ${...} reference or default.")
@_config_options
def config(config: Path | None, reference: bool, explain: bool, plugins: tuple[str, ...], cfg_options: tuple[str, ...],
           **shorthands: Any) -> None:
    """Print the merged, validated CONFIG with every default, as TOML.

    `posecore config import FILE.py` converts an MMPose config instead (see its --help).
    """
    from posecore import config as config_module

    if reference:
        from posecore.plugins import reference_page

        click.echo(reference_page())
        return
    if config is None:
        raise click.UsageError("missing CONFIG (or --reference, or import FILE.py)")
    from posecore.compose import compose
    from posecore.plugins import load_config

    overrides = _overrides(cfg_options, **shorthands)
    settings, _ = load_config(config, overrides, plugins)
    # Composing again is cheap and gives where each value came from, for the config load_config validated.
    click.echo(compose(config, overrides).explain(settings) if explain else config_module.dumps(settings), nl=False)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the TOML here, its paths relative to its folder (default: print it, paths relative to the "
                   "current directory).")
@click.option("--train-samples", type=click.IntRange(min=1), metavar="N",
              help="The training persons (COCO train2017: 149813), to turn MMPose's epochs (milestones, validation "
                   "and checkpoint intervals) into iterations. Default: counted in the training annotation file when "
                   "it is readable; otherwise those settings are listed as not translated.")
@click.option("--total-batch", type=click.IntRange(min=1), metavar="N",
              help="The total batch (batch_size x processes) that an epoch's iterations are counted for. Default: "
                   "auto_scale_lr.base_batch_size (MMPose's recipe: 8 x 64 = 512), else batch_size.")
def config_import(file: Path, out: Path | None, train_samples: int | None, total_batch: int | None) -> None:
    """Convert the MMPose 1.x config FILE.py, with its _base_ files, into a posecore TOML.

    The Python files are read, never run: posecore evaluates only the literal subset MMPose's configs are written in
    (dict(...), lists, numbers, strings, names, _base_.NAME, arithmetic) and refuses anything else with the file and
    line. MMPose's paths are relative to the folder MMPose runs in: run this there. The MMPose settings posecore has
    no key for are listed at the top of the TOML, one per line. Check the result with `posecore config OUT.toml`.
    """
    from posecore.mmpose_import import import_config

    imported = import_config(file, Path.cwd() if out is None else out.parent, train_samples, total_batch)
    count = len(imported.untranslated)
    summary = f"{count} MMPose setting(s) not translated, listed at the top" if count else "every setting translated"
    if out is None:
        click.echo(imported.toml(), nl=False)
        click.echo(f"posecore: {summary}", err=True)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(imported.toml(), encoding="utf-8")
    except OSError as err:
        raise InputError(f"{out}: cannot write ({err.strerror or err})") from None
    click.echo(f"posecore: wrote {out}; {summary}", err=True)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also say which plugins this config activates.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_config_options
def plugins(config_path: Path | None, as_json: bool, plugins: tuple[str, ...], cfg_options: tuple[str, ...],
            **shorthands: Any) -> None:
    """List installed plugins: name, distribution, version, whether active, the component types they provide
    (models, datasets, codecs, metrics, vis backends) and the hooks they implement."""
    from posecore.plugins import FIRST_PARTY_PROVIDES, discover, install_hint, load_config, new_manager, provided_types

    installed = discover()
    active = None
    if config_path is not None:
        _, plugin_set = load_config(config_path, _overrides(cfg_options, **shorthands), plugins)
        active = {p.name for p in plugin_set.active}
    rows = []
    for plugin in sorted(installed, key=lambda p: p.name):
        pm = new_manager()
        pm.register(plugin.module, name=plugin.name)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin.module) or [])
        types = {kind: sorted(named) for kind, named in provided_types(pm).items() if named}
        rows.append({"name": plugin.name, "distribution": plugin.dist, "version": plugin.version, "hooks": hooks,
                     "types": types, "active": None if active is None else plugin.name in active})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no plugins installed; the first-party ones: {install_hint(*FIRST_PARTY_PROVIDES.values())}")
        return
    state = {None: "-", True: "yes", False: "no"}
    table = [("NAME", "DISTRIBUTION", "VERSION", "ACTIVE", "TYPES", "HOOKS")] + [
        (r["name"], r["distribution"], r["version"], state[r["active"]],
         "; ".join(f"{kind}: {', '.join(names)}" for kind, names in r["types"].items()) or "-", ", ".join(r["hooks"]))
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])


def expand_cfg_options(argv: Sequence[str]) -> list[str]:
    """Let ``--cfg-options`` take several KEY=VALUE pairs, as MMEngine users type them."""
    out: list[str] = []
    taking = False
    for arg in argv:
        if arg == "--cfg-options":
            taking = True
            continue
        if taking and not arg.startswith("-") and "=" in arg:
            out += ["--cfg-options", arg]
            continue
        taking = False
        out.append(arg)
    return out


def resume_command(args: Sequence[str]) -> str:
    """The command that continues the stopped ``posecore ARGS``: the same arguments, ``--resume`` in place
    of any ``--resume [PATH]`` (under torchrun, the launcher's own arguments are not known here)."""
    kept: list[str] = []
    after_resume = False
    for arg in args:
        # A word after --resume that is no option was its PATH (click took it so, or the run never started):
        # the stopped run saved into its own work dir, so resuming goes on from the newest checkpoint there.
        is_path = after_resume and not arg.startswith("-")
        after_resume = arg == "--resume"
        if not (is_path or after_resume or arg.startswith("--resume=")):
            kept.append(arg)
    pairs = [arg for i, arg in enumerate(kept) if i and kept[i - 1] == "--cfg-options"]
    rest = [arg for i, arg in enumerate(kept) if arg != "--cfg-options" and not (i and kept[i - 1] == "--cfg-options")]
    words = ["posecore", *rest, "--resume"] + (["--cfg-options", *pairs] if pairs else [])
    command = shlex.join(words)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"the same torchrun command with: -m {command}"
    return command


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: one clear line and an exit code for every failure (POSECORE_DEBUG=1 adds tracebacks)."""
    code = _run(expand_cfg_options(sys.argv[1:] if argv is None else argv))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, leave without interpreter finalisation: everything is written and closed by
        # now, and torch's gloo threads can abort a finished process there (std::terminate).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


def _run(args: list[str]) -> int:
    """Run the command; its exit code."""
    try:
        cli.main(args=args, prog_name="posecore", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as err:
        err.show()
        return 2 if isinstance(err, click.UsageError) else 1
    except (click.Abort, KeyboardInterrupt):
        click.echo("posecore: interrupted", err=True)
        return 130
    except StopRun as stop:
        click.echo(f"posecore: {stop}; continue with: {resume_command(args)}", err=True)
        return stop.exit_code
    except PosecoreError as err:
        if os.environ.get("POSECORE_DEBUG"):
            traceback.print_exc()
        click.echo(f"posecore: error: {err}", err=True)
        return err.exit_code
    except Exception as err:
        if os.environ.get("POSECORE_DEBUG"):
            traceback.print_exc()
        click.echo(f"posecore: error: {type(err).__name__}: {err} (POSECORE_DEBUG=1 shows the traceback)", err=True)
        return 1
    return 0
