"""Every hook the core emits, in the order a run calls them.

Implement them in a plugin module with ``@posecore.hookimpl`` and register the module under the
``posecore`` entry-point group. Arguments are passed by keyword; an implementation may accept any
subset of them. Unless marked *first result wins*, every active plugin's implementation is called
and the results are collected in a list (None results dropped). ``run`` is the
:class:`posecore.run.Run` of the current training run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager, Mapping

import pluggy

if TYPE_CHECKING:
    import torch

    from posecore.config import Schema
    from posecore.run import Run

hookspec = pluggy.HookspecMarker("posecore")


@hookspec
def config_schema() -> Schema | None:
    """Return the config keys this plugin owns, as ``{top-level key: Key | Section}``.

    Called for every installed plugin before activation: using one of these keys in a config
    activates the plugin. A section that holds an ``enabled`` key set to false does not.
    """


@hookspec
def vis_backends() -> Mapping[str, type] | None:
    """Return ``{type name: class}`` of vis backends this plugin provides. This is the vis backend contract.

    Called for every installed plugin; naming a type in ``visualizer.vis_backends`` activates its plugin, and
    naming the plugin (``--plugin NAME``) when the config lists none of its types appends them with their
    defaults. Backends exist on rank 0 only, and the core calls them from the loop's thread. A class is built as
    ``cls(vis_dir, resume_step, **options)`` (``vis_dir``: the ``vis_data`` folder; ``resume_step``: None, or
    the step a resumed run continues after, whose later records a crash left behind are to be dropped),
    declares its options as a ``options: Section`` class attribute and has ``add_scalars(scalars, step)``,
    ``add_config(text)``, ``flush()`` (after each validation) and ``close()`` (last, also after an error).

    Optional, each called (with positional arguments) only on a backend that has it:

    - ``state()``: plain values (e.g. the id of a tracker's run) saved in each checkpoint; a run resumed from
      that checkpoint builds the backend with ``resume_state=`` that dict, so it continues the same tracker run.
    - ``add_image(tag, image, step)`` with a ``num_images`` attribute (as a rule an option, 0: none): after each
      validation ``add_image("val/predictions", grid, step)``, where ``grid`` is
      :func:`posecore.vis.prediction_grid` of ``num_images`` validation crops, an (H, W, 3) uint8 array.
    - ``checkpointed(step)``: the checkpoint of iteration ``step``, now the newest, is complete on disk. Called
      right after a save, for ``checkpoint.async`` when the loop next sees the background write done (one done
      and already overtaken by a newer one then is not told), and at the end of the run, once the last write
      has finished, before ``close``; not for the checkpoint a run resumes from. A tracker that must not
      receive a step twice across a kill and ``--resume`` sends only the steps up to it.
    - ``summarize(hparams, metrics, step)``: once, before ``close``, when the run ends without an error and
      validated at least once: ``hparams`` the run's main settings (:func:`posecore.vis.hparams`: optim.type,
      optim.lr, optim.weight_decay, model.type, batch_size, max_iters, seed, codec.type, input_size),
      ``metrics`` the last validation's, ``step`` the last iteration.
    """


@hookspec
def model_types() -> Mapping[str, type] | None:
    """Return ``{type name: class}`` of models (``[model] type = ...``): see :class:`posecore.protocols.Model`.

    Called for every installed plugin, like ``vis_backends``; naming a type activates its plugin. So are the
    three hooks below, each for its kind of component (:mod:`posecore.protocols` says what each must do).
    """


@hookspec
def dataset_types() -> Mapping[str, type] | None:
    """Return ``{type name: class}`` of record sources (``[*_dataloader.dataset] type = ...``)."""


@hookspec
def codec_types() -> Mapping[str, type] | None:
    """Return ``{type name: class}`` of codecs (``[codec] type = ...``)."""


@hookspec
def metric_types() -> Mapping[str, type] | None:
    """Return ``{type name: class}`` of validation metrics (``[val_evaluator] type = ...``)."""


@hookspec
def configure(config: dict[str, Any]) -> None:
    """Check or complete the merged, validated config (active plugins only).

    Raise :class:`posecore.errors.ConfigError` for a bad combination of values. May add entries
    (e.g. a value derived from others); the result is what ``posecore config`` prints and each run dumps.
    """


@hookspec
def before_build(run: Run) -> None:
    """Called before any model, optimizer or data is built: seed generators, and create the per-run
    objects that ``load_state`` may restore (``run.plugin_data[name]``), here."""


@hookspec
def before_train(run: Run) -> None:
    """Called once everything is built and before the first batch is loaded: load checkpoints here. The run
    folder (``run.run_dir``) is made after it, once the work dir is known to be this run's."""


@hookspec
def before_iter(run: Run) -> None:
    """Called at the start of each training iteration; ``run.iteration`` is the number done so far."""


@hookspec(firstresult=True)
def forward_context(run: Run) -> ContextManager[Any] | None:
    """Return a context manager the forward pass and loss run under (e.g. autocast). First result wins.

    Called once, before the first iteration; the same object is entered every iteration.
    """


@hookspec(firstresult=True)
def eval_model(run: Run) -> torch.nn.Module | None:
    """Return the module to validate and to save as the checkpoints' ``model`` in place of the trained one (e.g. an
    average of its weights); None: the trained one. First result wins.

    Called at each validation and save, and on resume. When it returns another module, each checkpoint holds its
    weights as ``model`` (what ``posecore test``, ``predict``, ``load_from`` and ``posecore.load_model`` read, with
    or without the plugin) and the trained weights as ``train_model`` (what a resumed run trains on); on resume,
    after ``load_state``, the core loads ``model`` back into this module. ``posecore test`` calls no
    ``before_train``: a plugin that makes its module there returns None in a test run.
    """


@hookspec(firstresult=True)
def backward_step(run: Run, loss: torch.Tensor) -> bool | None:
    """Back-propagate ``loss`` and step the optimizer; return True when handled. First result wins.

    The core's implementation runs last: zero grads, backward, optional clipping, step, and advance
    ``run.optimizer_steps`` (the schedule position). A plugin that skips a step leaves the counter.
    """


@hookspec
def after_iter(run: Run, loss: torch.Tensor) -> None:
    """Called after each optimizer step; ``run.iteration`` already counts it. ``loss`` is not synced."""


@hookspec
def collect_scalars(run: Run) -> Mapping[str, float] | None:
    """Return extra scalars to log at a logging iteration (e.g. the AMP loss scale)."""


@hookspec
def after_val(run: Run, metrics: Mapping[str, float]) -> None:
    """Called after each validation with its metrics (e.g. ``{"PCK": 0.91}``)."""


@hookspec
def save_state(run: Run) -> dict[str, Any] | None:
    """Return this plugin's state for a checkpoint: tensors and plain values only.

    The core stores it under the plugin's name, so each plugin sees only its own entry again.
    """


@hookspec
def load_state(run: Run, state: dict[str, Any]) -> None:
    """Restore what ``save_state`` returned; called only for plugins with an entry in the checkpoint."""


@hookspec
def after_train(run: Run, error: BaseException | None) -> None:
    """Called once when the run ends, normally (``error`` None) or not: flush and close here."""
