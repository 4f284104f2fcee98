"""The core's config schema: every key the core reads, with its type, default and meaning."""

from __future__ import annotations

from posecore.config import Key, Section, Types

RELATIVE = " Relative: from the config file's folder (from the current directory on the command line)."
"""Said of every key that names a file to read (``Key(..., input_path=True)``)."""


def _dataloader(batch_size: int, num_workers: int, help: str, synthetic: dict[str, int]) -> Section:
    return Section({
        "batch_size": Key(int, batch_size, "Samples per batch (per process).", min=1),
        "num_workers": Key(int, num_workers, "DataLoader worker processes; results do not depend on it.", min=0),
        "persistent_workers": Key(bool, True, "Keep workers alive between epochs (when num_workers > 0)."),
        "pin_memory": Key(bool, False, "Pin host memory for faster copies to a GPU."),
        "dataset": Types("dataset", "SyntheticPoses", "Dataset type: the record source (a plugin may provide more).",
                         defaults={"SyntheticPoses": synthetic}),
    }, help)


CORE_SCHEMA = {
    "work_dir": Key(str, None, "Where checkpoints and run folders go. Default: `work_dirs/<config file stem>`. "
                               "Relative: from the current directory (outputs go where you work, as in MMEngine)."),
    "load_from": Key(str, None, "Checkpoint whose model weights initialise the run (iteration 0, fresh "
                                "optimizer). With `resume = true` (posecore-resume) the run continues from it."
                    + RELATIVE, input_path=True),
    "load_strict": Key(bool, True, "Whether `load_from` and `model.init_weights` must fit the model exactly; "
                                   "false loads the keys that fit (e.g. a different head) and logs the rest."),
    "plugins": Key(list, [], "Plugins to activate by name; `\"no:NAME\"` blocks one.", item=str),
    "require": Key(list, [], "Distributions that must be installed, as pip requirements "
                             "(e.g. `\"posecore-amp>=0.1\"`), checked before anything runs.", item=str),
    "device": Key(str, "auto", "`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`."),
    "codec": Types("codec", "GaussianHeatmap", "How keypoints become training targets and network outputs become "
                                               "keypoints again (a plugin may provide more)."),
    "model": Types("model", "TopDownHeatmapNet", "The network (a plugin may provide more).", common={
        "norm": Key(str, "batch", "Normalisation layers: `batch` (as built: BatchNorm, statistics per process), "
                                  "`sync_batch` (its BatchNorm made SyncBatchNorm: statistics over all processes "
                                  "under torchrun; CUDA only) or `group` (BatchNorm made GroupNorm: per sample, "
                                  "independent of the batch split).",
                    choices=("batch", "sync_batch", "group")),
        "flip_test": Key(bool, False, "At validation, `posecore test` and `posecore predict`, also predict on the "
                                      "mirrored input and average the outputs (slower, usually more accurate)."),
        "init_weights": Key(str, None, "Pretrained weights (a checkpoint or a state_dict file) to start from; "
                                       "not re-applied when a run is resumed (its checkpoint already has them)."
                            + RELATIVE, input_path=True),
    }),
    "train_dataloader": _dataloader(32, 1, "Training data.", {"num_samples": 20000, "seed": 0}),
    "augment": Section({
        "flip_prob": Key(float, 0.5, "Probability of a horizontal flip (left/right keypoints swap).", min=0, max=1),
        "scale_factor": Key(float, 0.25, "Random scale range: scale * clip(1 + N(0,1) * f, 1 - f, 1 + f).",
                            min=0, max=0.9),
        "rotate_factor": Key(float, 30.0, "Random rotation std-dev in degrees (clipped to twice this).",
                             min=0, max=180),
        "rotate_prob": Key(float, 0.6, "Probability of applying a random rotation.", min=0, max=1),
        "padding": Key(float, 1.25, "Box enlargement before cropping.", min=1.0),
        "half_body_prob": Key(float, 0.0, "Probability of cropping around the upper or the lower body only (MMPose's "
                                          "RandomHalfBody `prob`, 0.3 there); needs the layout's `upper_body`.",
                              min=0, max=1),
        "min_total_keypoints": Key(int, 9, "Half body: labelled keypoints a person needs for it.", min=0),
        "min_upper_keypoints": Key(int, 2, "Half body: labelled upper-body keypoints needed to crop the upper body.",
                                   min=0),
        "min_lower_keypoints": Key(int, 3, "Half body: labelled lower-body keypoints needed to crop the lower body.",
                                   min=0),
        "upper_prioritized_prob": Key(float, 0.7, "Half body: probability of the upper body where both halves "
                                                  "qualify.", min=0, max=1),
        "half_body_padding": Key(float, 1.5, "Half body: enlargement of the box around the half's labelled "
                                             "keypoints (centred on their mean; MMPose's `padding`).", min=1.0),
        "shift_prob": Key(float, 0.0, "Probability of shifting the box (MMPose's RandomBBoxTransform, 0.3 there).",
                          min=0, max=1),
        "shift_factor": Key(float, 0.16, "Box shift: the centre moves by t * f * the padded box's width and height, t "
                                         "a standard normal truncated to [-1, 1] for each axis.", min=0, max=1),
    }, "Training augmentation, in MMPose's order: flip, half body, then the box's shift, scale and rotation; each "
       "sample's randomness is drawn from (seed, epoch, index)."),
    "val_dataloader": _dataloader(64, 0, "Validation data (no augmentation).", {"num_samples": 256, "seed": 1}),
    "val_evaluator": Types("metric", "PCKAccuracy", "How validation is scored (a plugin may provide more)."),
    "optim": Section({
        "type": Key(str, "AdamW", "Optimizer.", choices=("Adam", "AdamW", "SGD")),
        "lr": Key(float, 2e-3, "Base learning rate.", min=0),
        "weight_decay": Key(float, 1e-4, "Weight decay.", min=0),
        "momentum": Key(float, 0.9, "Momentum (SGD only).", min=0, max=1),
        "clip_grad_norm": Key(float, None, "Clip the global gradient norm to this value (unset: no clipping).",
                              min=0),
    }, "Optimizer and gradient clipping."),
    "scheduler": Section({
        "type": Key(str, "cosine", "Decay after warm-up.", choices=("cosine", "step", "constant")),
        "warmup_iters": Key(int, 100, "Iterations of linear warm-up.", min=0),
        "warmup_ratio": Key(float, 0.001, "Learning-rate factor at the first warm-up iteration.", min=0, max=1),
        "min_lr_ratio": Key(float, 0.0, "Cosine: final learning rate as a fraction of the base.", min=0, max=1),
        "milestones": Key(list, [], "Step: iterations at which the rate is multiplied by `gamma`.", item=int,
                          min=0),
        "gamma": Key(float, 0.1, "Step: multiplicative factor at each milestone.", min=0),
    }, "Learning-rate schedule, a function of the number of optimizer steps taken."),
    "auto_scale_lr": Section({
        "enable": Key(bool, False, "Scale `optim.lr` by (batch_size x processes) / base_batch_size, as MMPose does."),
        "base_batch_size": Key(int, 512, "The total batch size `optim.lr` was tuned for.", min=1),
    }, "Learning rate that follows the total batch size (batch_size is per process)."),
    "dist": Section({
        "timeout": Key(float, 600.0, "Seconds a collective waits for the other processes under torchrun before "
                                     "the job fails (a rank that died or hangs).", min=1),
    }, "Distributed training under torchrun (nccl on CUDA, gloo on CPU)."),
    "train": Section({
        "max_iters": Key(int, None, "Training length in iterations (set this or `max_epochs`).", min=1),
        "max_epochs": Key(int, None, "Training length in epochs of the training set (set this or `max_iters`).",
                          min=1),
        "val_interval": Key(int, 500, "Validate every N iterations and at the end (0: only at the end).", min=0),
        "log_interval": Key(int, 50, "Log training figures every N iterations.", min=1),
    }, "The loop."),
    "checkpoint": Section({
        "interval": Key(int, 1000, "Save `iter_<N>.pth` every N iterations and at the end.", min=1),
        "max_keep": Key(int, 3, "Keep the N newest `iter_*.pth` (0: keep all).", min=0),
        "save_best": Key(str, None, "Keep `best_<metric>_iter_<N>.pth` for this validation metric (e.g. `PCK`)."),
        "async": Key(bool, False, "Write checkpoints on a background thread: the loop waits only for a copy of "
                                  "the state in host memory; the pointers move once the file is written and "
                                  "verified; one write at a time; the run's end waits for it."),
        "rule": Key(str, "greater", "Whether a greater or a lesser `save_best` metric is better.",
                    choices=("greater", "less")),
    }, "Checkpoints."),
    "visualizer": Section({
        "vis_backends": Key(list, [{"type": "LocalVisBackend"}],
                            "Where scalars go: tables with a `type` (`LocalVisBackend` writes "
                            "`vis_data/scalars.json`; plugins add more, e.g. `TensorboardVisBackend`).", item=dict),
    }, "Logging backends."),
}
