"""The core's config schema: every key the core reads, with its type, default and meaning."""

from __future__ import annotations

from dataclasses import replace

from posecore.config import Key, Section, Types

RELATIVE = " Relative: from the config file's folder (from the current directory on the command line)."
"""Said of every key that names a file to read (``Key(..., input_path=True)``)."""


def _with_switch(augment: Section) -> Section:
    """``augment`` with its ``switch`` table, which takes any of its keys (without defaults: only the keys given
    replace) and the epoch they replace from."""
    replacing = {name: replace(key, default=None, help=f"From `epoch` on: `augment.{name}`.")
                 for name, key in augment.keys.items()}
    switch = Section({
        "epoch": Key(int, None, "The first (0-based) epoch of the switched augmentation (MMPose's `switch_epoch`, "
                                "`max_epochs - stage2_num_epochs` in RTMPose's configs); required with the table.",
                     min=0),
        **replacing,
    }, "A second stage of augmentation, as MMPose's PipelineSwitchHook: from epoch `epoch` on, the `[augment]` keys "
       "given here replace those above (e.g. `shift_prob = 0.0`, `albumentations = [...]`). Epochs count passes "
       "over the training set, with `train.max_iters` too.")
    return Section({**augment.keys, "switch": switch}, augment.help)


def _dataloader(batch_size: int, num_workers: int, help: str, synthetic: dict[str, int]) -> Section:
    return Section({
        "batch_size": Key(int, batch_size, "Samples per batch (per process).", min=1),
        "num_workers": Key(int, num_workers, "DataLoader worker processes; results do not depend on it.", min=0),
        "persistent_workers": Key(bool, True, "Keep workers alive between epochs (when num_workers > 0)."),
        "pin_memory": Key(bool, False, "Pin host memory for faster copies to a GPU."),
        "dataset": Types("dataset", "SyntheticPoses", "Dataset type: the record source (a plugin may provide more).",
                         defaults={"SyntheticPoses": synthetic}),
    }, help)


class _ScaleRange(Key):
    """``augment.scale_factor``: its type error says how to write MMPose 0.x's single factor."""

    def type_name(self) -> str:
        return "array of float [low, high] (for MMPose 0.x's single factor f, write [1 - f, 1 + f])"


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
        "channels_last": Key(bool, False, "Keep the weights and the crops each training step feeds the model in "
                                          "channels-last memory format (NHWC), which convolutions often run faster "
                                          "in on GPUs; checkpoints hold the same keys, and a resumed run is bitwise "
                                          "the uninterrupted one with this setting (not the run without it: "
                                          "convolutions sum in another order). See bench/README.md, `compute.py`."),
        "compile": Key(bool, False, "Train through `torch.compile` (TorchInductor): the first iteration compiles "
                                    "(tens of seconds to minutes), later ones may run faster; validation and "
                                    "checkpoints use the eager model (the same keys). A compiled run resumed "
                                    "compiled is bitwise the uninterrupted compiled run, not the eager one (the "
                                    "kernels round differently). On a CPU it needs a C++ compiler and Python's "
                                    "headers."),
    }),
    "train_dataloader": _dataloader(32, 1, "Training data.", {"num_samples": 20000, "seed": 0}),
    "augment": _with_switch(Section({
        "flip_prob": Key(float, 0.5, "Probability of a horizontal flip (left/right keypoints swap).", min=0, max=1),
        "scale_factor": _ScaleRange(list, [0.75, 1.25], "Random scale [low, high] of the box (MMPose 1.x's): "
                                                        "(low + high) / 2 + t * (high - low) / 2, t a standard normal "
                                                        "truncated to [-1, 1].", item=float, length=2, min=0.1),
        "scale_prob": Key(float, 1.0, "Probability of applying the random scale.", min=0, max=1),
        "rotate_factor": Key(float, 60.0, "Random rotation in degrees: t * this, t a standard normal truncated to "
                                          "[-1, 1] (MMPose 1.x's; 80 there).", min=0, max=180),
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
        "hsv_hue_delta": Key(int, 0, "HSV jitter of the crop, as MMDetection's YOLOXHSVRandomAug (`hue_delta`, 5 in "
                                     "RTMPose's configs): with probability 1/2, OpenCV's hue (0-179) moves by a whole "
                                     "number within +-this; 0: off.",
                             min=0, max=180),
        "hsv_saturation_delta": Key(int, 0, "HSV jitter: with probability 1/2, the saturation (0-255) moves by a whole "
                                            "number within +-this, clipped (`saturation_delta`, 30 there); 0: off.",
                                    min=0, max=255),
        "hsv_value_delta": Key(int, 0, "HSV jitter: with probability 1/2, the value (0-255) moves by a whole number "
                                       "within +-this, clipped (`value_delta`, 30 there); 0: off.", min=0, max=255),
        "albumentations": Key(list, [], "albumentations 2.x pixel-level transforms and dropouts applied to the crop "
                                        "after the HSV jitter, as MMPose's `Albumentation` step: tables of a class "
                                        "name and its arguments, e.g. `{type = \"Blur\", p = 0.1}` or `{type = "
                                        "\"CoarseDropout\", num_holes_range = [1, 1], hole_height_range = [0.2, 0.4], "
                                        "hole_width_range = [0.2, 0.4], p = 1.0}`. Needs albumentations (the "
                                        "posecore[augment] extra).", item=dict),
    }, "Training augmentation, in MMPose's order: flip, half body, then the box's shift, scale and rotation, then "
       "the crop's colours (HSV jitter, albumentations); each sample's randomness is drawn from (seed, epoch, "
       "index).")),
    "val_dataloader": _dataloader(64, 0, "Validation data (no augmentation).", {"num_samples": 256, "seed": 1}),
    "val_evaluator": Types("metric", "PCKAccuracy", "How validation is scored (a plugin may provide more)."),
    "optim": Section({
        "type": Key(str, "AdamW", "Optimizer.", choices=("Adam", "AdamW", "SGD")),
        "lr": Key(float, 2e-3, "Base learning rate.", min=0),
        "weight_decay": Key(float, 1e-4, "Weight decay.", min=0),
        "momentum": Key(float, 0.9, "Momentum (SGD only).", min=0, max=1),
        "clip_grad_norm": Key(float, None, "Clip the global gradient norm to this value (unset: no clipping).",
                              min=0),
        "paramwise": Section({
            "norm_decay_mult": Key(float, 1.0, "Weight-decay factor for the weights and biases of normalisation "
                                               "layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm).", min=0),
            "bias_decay_mult": Key(float, 1.0, "Weight-decay factor for the biases of other layers.", min=0),
        }, "Weight decay by kind of parameter, as MMEngine's `paramwise_cfg` (RTMPose's: both 0)."),
    }, "Optimizer and gradient clipping."),
    "scheduler": Section({
        "type": Key(str, "cosine", "Decay after warm-up.", choices=("cosine", "step", "constant")),
        "by_epoch": Key(bool, False, "`milestones` and `begin` count epochs (MMPose's `by_epoch = True`), turned into "
                                     "iterations at this run's iterations per epoch; the warm-up still counts "
                                     "iterations."),
        "begin": Key(int, 0, "Cosine: where the decay starts (MMPose's CosineAnnealingLR `begin`); the rate stays flat "
                             "from the warm-up's end to it, then falls to the end of the run.", min=0),
        "warmup_iters": Key(int, 100, "Iterations of linear warm-up (MMPose's LinearLR `end`: the rate reaches the "
                                      "base at step warmup_iters - 1).", min=0),
        "warmup_ratio": Key(float, 0.001, "Learning-rate factor at the first warm-up iteration.", min=0, max=1),
        "min_lr_ratio": Key(float, 0.0, "Cosine: final learning rate as a fraction of the base.", min=0, max=1),
        "milestones": Key(list, [], "Step: iterations (epochs with `by_epoch`) at which the rate is multiplied by "
                                    "`gamma`.", item=int, min=0),
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
