"""The core's config schema: every key the core reads, with its type, default and meaning."""

from __future__ import annotations

from posecore.config import Dependency, Key, Section, Variants

PYCOCOTOOLS = Dependency("pycocotools.cocoeval", "pip install pycocotools (the posecore[coco] extra)")
"""COCO keypoint AP (``val_evaluator.type = "CocoMetric"``)."""

_RELATIVE = " Relative: from the config file's folder (from the current directory on the command line)."

COCO_KEYPOINTS = Section({
    "ann_file": Key(str, None, "COCO person-keypoints annotation JSON (required)." + _RELATIVE, input_path=True),
    "img_dir": Key(str, None, "Folder holding the images named by `file_name` (required)." + _RELATIVE,
                   input_path=True),
    "keypoints": Key(str, "coco17", "Built-in keypoint layout of the file (names, flip pairs, skeleton, OKS "
                                    "sigmas); the four keys below replace its parts.",
                     choices=("coco17", "crowdpose14")),
    "keypoint_names": Key(list, None, "Keypoint names in the file's order (a layout of your own: set the next "
                                      "three keys too).", item=str),
    "flip_pairs": Key(list, None, "0-based [left, right] index pairs that a horizontal flip swaps.", item=list),
    "skeleton": Key(list, None, "0-based [a, b] index pairs linked when drawing poses.", item=list),
    "sigmas": Key(list, None, "OKS sigma of each keypoint (COCO keypoint AP).", item=float, min=0),
    "det_file": Key(str, None, "Detected person boxes (COCO results JSON) to use instead of the annotations' boxes."
                   + _RELATIVE, input_path=True),
    "det_score_thr": Key(float, 0.0, "Ignore detections scoring below this.", min=0, max=1),
}, "COCO-format keypoint annotations and images (COCO, OCHuman, CrowdPose, your own data).")


def _synthetic(num_samples: int, seed: int) -> Variants:
    synthetic = Section({
        "num_samples": Key(int, num_samples, "Number of generated samples (made on the fly, no files).", min=1),
        "image_size": Key(list, [128, 128], "Scene size [width, height] in pixels.", item=int, length=2, min=16),
        "seed": Key(int, seed, "Seed of the figures themselves (not of augmentation); train and val differ.",
                    min=0),
    }, "Human-like stick figures with 17 COCO-ordered keypoints, deterministic per index.")
    return Variants({"SyntheticPoses": synthetic, "CocoKeypoints": COCO_KEYPOINTS}, "SyntheticPoses", "Dataset type.")


def _dataloader(batch_size: int, num_workers: int, dataset: Variants, help: str) -> Section:
    return Section({
        "batch_size": Key(int, batch_size, "Samples per batch (per process).", min=1),
        "num_workers": Key(int, num_workers, "DataLoader worker processes; results do not depend on it.", min=0),
        "persistent_workers": Key(bool, True, "Keep workers alive between epochs (when num_workers > 0)."),
        "pin_memory": Key(bool, False, "Pin host memory for faster copies to a GPU."),
        "dataset": dataset,
    }, help)


CORE_SCHEMA = {
    "work_dir": Key(str, None, "Where checkpoints and run folders go. Default: `work_dirs/<config file stem>`. "
                               "Relative: from the current directory (outputs go where you work, as in MMEngine)."),
    "load_from": Key(str, None, "Checkpoint whose model weights initialise the run (iteration 0, fresh "
                                "optimizer). With `resume = true` (posecore-resume) the run continues from it."
                    + _RELATIVE, input_path=True),
    "load_strict": Key(bool, True, "Whether `load_from` and `model.init_weights` must fit the model exactly; "
                                   "false loads the keys that fit (e.g. a different head) and logs the rest."),
    "plugins": Key(list, [], "Plugins to activate by name; `\"no:NAME\"` blocks one.", item=str),
    "require": Key(list, [], "Distributions that must be installed, as pip requirements "
                             "(e.g. `\"posecore-amp>=0.1\"`), checked before anything runs.", item=str),
    "device": Key(str, "auto", "`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`."),
    "codec": Section({
        "input_size": Key(list, [48, 64], "Network input [width, height] in pixels.", item=int, length=2, min=8),
        "heatmap_size": Key(list, [24, 32], "Heatmap [width, height]; input_size divided by the head's stride.",
                            item=int, length=2, min=2),
        "sigma": Key(float, 1.5, "Gaussian sigma of heatmap targets, in heatmap pixels.", min=0.1),
    }, "How keypoints become heatmap targets and back (MMPose's MSRAHeatmap codec)."),
    "model": Section({
        "preset": Key(str, "small", "Backbone preset: `small` (fast on CPU) or `resnet50` (for GPUs).",
                      choices=("small", "resnet50")),
        "stage_channels": Key(list, None, "Channels of each backbone stage (overrides the preset).", item=int,
                              min=1),
        "stage_blocks": Key(list, None, "Residual blocks in each backbone stage (overrides the preset).", item=int,
                            min=1),
        "deconv_channels": Key(list, None, "Channels of each deconvolution layer of the head (overrides the "
                                           "preset).", item=int, min=1),
        "dropout": Key(float, 0.0, "Dropout before the head's final convolution.", min=0.0, max=0.99),
        "norm": Key(str, "batch", "Normalisation layers: `batch` (BatchNorm, statistics per process), "
                                  "`sync_batch` (SyncBatchNorm: statistics over all processes under torchrun; "
                                  "CUDA only) or `group` (GroupNorm: per sample, independent of the batch split).",
                    choices=("batch", "sync_batch", "group")),
        "flip_test": Key(bool, False, "At validation, `posecore test` and `posecore predict`, also predict on the "
                                      "mirrored input and average the heatmaps (slower, usually more accurate)."),
        "init_weights": Key(str, None, "Pretrained weights (a checkpoint or a state_dict file) to start from; "
                                       "not re-applied when a run is resumed (its checkpoint already has them)."
                            + _RELATIVE, input_path=True),
    }, "Top-down heatmap model: ResNet-style backbone and deconvolution head."),
    "train_dataloader": _dataloader(32, 1, _synthetic(20000, 0), "Training data."),
    "augment": Section({
        "flip_prob": Key(float, 0.5, "Probability of a horizontal flip (left/right keypoints swap).", min=0, max=1),
        "scale_factor": Key(float, 0.25, "Random scale range: scale * clip(1 + N(0,1) * f, 1 - f, 1 + f).",
                            min=0, max=0.9),
        "rotate_factor": Key(float, 30.0, "Random rotation std-dev in degrees (clipped to twice this).",
                             min=0, max=180),
        "rotate_prob": Key(float, 0.6, "Probability of applying a random rotation.", min=0, max=1),
        "padding": Key(float, 1.25, "Box enlargement before cropping.", min=1.0),
    }, "Training augmentation; each sample's randomness is drawn from (seed, epoch, index)."),
    "val_dataloader": _dataloader(64, 0, _synthetic(256, 1), "Validation data (no augmentation)."),
    "val_evaluator": Section({
        "type": Key(str, "PCKAccuracy", "`PCKAccuracy` (logged as `PCK`) or `CocoMetric` (COCO keypoint AP via "
                                        "pycocotools, `posecore[coco]`: `AP`, `AP50`, ... `ARl`; needs a "
                                        "CocoKeypoints validation set).", choices=("PCKAccuracy", "CocoMetric"),
                 requires={"CocoMetric": PYCOCOTOOLS}),
        "thr": Key(float, 0.05, "PCKAccuracy: threshold, as a fraction of the box width/height.", min=0, max=1),
        "nms_thr": Key(float, 0.9, "CocoMetric: OKS-NMS threshold among one image's instances.", min=0, max=1),
        "keypoint_score_thr": Key(float, 0.2, "CocoMetric: keypoint scores above this form the instance score.",
                                  min=0, max=1),
    }, "How validation is scored."),
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
