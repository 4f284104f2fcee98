"""``posecore config import``: an MMPose 1.x config as a posecore TOML, for the parts posecore has.

The config and its ``_base_`` chain are read by :mod:`posecore.pyconfig`, never run. Each MMPose setting becomes the
posecore key that does the same, as in the hand-written examples/mmpose/; where MMPose's default differs from
posecore's, MMPose's is written. Settings that posecore follows without a key (LoadImage, the ImageNet normalisation,
the samplers, the timer hook, ...) need none. Every other setting of MMEngine's Runner is listed as not translated,
one line each (``key = value`` as MMPose writes it), at the top of the TOML. Top-level names the Runner does not read
(``codec``, ``data_root``, ``train_pipeline``, ...) are variables: what counts is where the config uses them.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

from posecore.config import dumps, plain
from posecore.errors import ConfigError
from posecore.pyconfig import read_config
from posecore.schema import CORE_SCHEMA

Parts = tuple[Union[str, int], ...]

RUNNER_KEYS = ("model", "work_dir", "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg",
               "test_cfg", "auto_scale_lr", "optim_wrapper", "param_scheduler", "val_evaluator", "test_evaluator",
               "default_hooks", "custom_hooks", "data_preprocessor", "load_from", "resume", "launcher", "env_cfg",
               "log_processor", "log_level", "visualizer", "default_scope", "randomness", "experiment_name",
               "custom_imports", "model_wrapper_cfg", "find_unused_parameters", "activation_checkpointing",
               "efficient_conv_bn_eval")
"""The top-level keys MMEngine's Runner reads; a config's other top-level names are variables."""

_ORDER = ("work_dir", "load_from", "resume", "codec", "model", "train_dataloader", "augment", "val_dataloader",
          "val_evaluator", "optim", "scheduler", "auto_scale_lr", "train", "ema", "checkpoint", "visualizer",
          "randomness")
_CODEC_OPTIONS = {"MSRAHeatmap": ("input_size", "heatmap_size", "sigma", "unbiased", "blur_kernel_size"),
                  "UDPHeatmap": ("input_size", "heatmap_size", "sigma", "heatmap_type", "blur_kernel_size"),
                  "SimCCLabel": ("input_size", "smoothing_type", "sigma", "simcc_split_ratio", "label_smooth_weight",
                                 "normalize", "use_dark", "decode_visibility")}
_CODEC_ONLY = {"heatmap_type": "gaussian", "decode_visibility": False}
"""Codec options of which posecore has one value."""
_PREPROCESSOR = {"type": "PoseDataPreprocessor", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                 "bgr_to_rgb": True}
"""MMPose's ImageNet normalisation of RGB images: what posecore's transform always does."""
_WEIGHT_DECAY = {"Adam": 0.0, "AdamW": 0.01, "SGD": 0.0}
"""torch's default weight decay of each optimizer posecore has (MMEngine passes the config's options to torch)."""
_COCO_STATS = ("AP", "AP .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)")
"""MMPose's CocoMetric names, in the order of posecore's ``STAT_NAMES``."""
_STAGE_KEYS = ("num_modules", "num_branches", "block", "num_blocks", "num_channels")
_HALF_BODY = {"prob": ("half_body_prob", 0.3), "min_total_keypoints": ("min_total_keypoints", 9),
              "min_upper_keypoints": ("min_upper_keypoints", 2), "min_lower_keypoints": ("min_lower_keypoints", 3),
              "padding": ("half_body_padding", 1.5), "upper_prioritized_prob": ("upper_prioritized_prob", 0.7)}
"""RandomHalfBody's options: posecore's key for each, and MMPose's default."""
_BOX_TRANSFORM = {"shift_factor": 0.16, "shift_prob": 0.3, "scale_factor": [0.5, 1.5], "scale_prob": 1.0,
                  "rotate_factor": 80.0, "rotate_prob": 0.6}
"""RandomBBoxTransform's options (posecore's keys of the same names) and MMPose's defaults."""
_HSV = {"hue_delta": 5, "saturation_delta": 30, "value_delta": 30}
"""MMDetection's YOLOXHSVRandomAug options (posecore's ``hsv_`` keys) and their defaults."""
_COLOURS_OFF = {"hsv_hue_delta": 0, "hsv_saturation_delta": 0, "hsv_value_delta": 0, "albumentations": []}
"""The colour augmentation without its steps (posecore's defaults, written only where a step sets them)."""
_HOLES_1X = (("num_holes_range", "min_holes", "max_holes"), ("hole_height_range", "min_height", "max_height"),
             ("hole_width_range", "min_width", "max_width"))
"""albumentations 2.x's CoarseDropout ranges and the 1.x [min, max] options they replace (1.x: min defaults to max,
and every max to 8)."""
_NORM_LAYERS = {"BN": "batch", "SyncBN": "sync_batch"}
"""MMCV's ``norm_cfg`` types and posecore's ``model.norm`` for each."""
_SWITCH_HOOKS = ("PipelineSwitchHook", "mmdet.PipelineSwitchHook")


@dataclass
class Imported:
    """An MMPose config in posecore's terms."""

    source: Path
    config: dict[str, Any]
    """The posecore config, a TOML table."""
    untranslated: list[str]
    """One line per MMPose setting posecore has no key for: ``key = value`` as MMPose writes it, and in parentheses
    why, where the value is MMPose's default (not in the file) or needs what the importer did not know."""
    notes: list[str]
    """How values were converted: paths, epochs as iterations."""

    def toml(self) -> str:
        """The TOML text: a comment block (the notes, then the settings not translated), then the config."""
        lines = [f"# Imported by `posecore config import` from MMPose's {self.source.name} (read, not run)."]
        for note in self.notes:
            lines += textwrap.wrap(note, 116, initial_indent="# ", subsequent_indent="# ", break_long_words=False,
                                   break_on_hyphens=False)
        if self.untranslated:
            lines += ["#", "# Not translated: posecore has no key for these MMPose settings (one per line):",
                      *(f"#   {line}" for line in self.untranslated)]
        return "\n".join(lines) + "\n\n" + dumps(self.config)


def import_config(path: str | Path, out_dir: str | Path, train_samples: int | None = None,
                  total_batch: int | None = None, cwd: str | Path | None = None) -> Imported:
    """Translate the MMPose config at ``path``. Its paths are relative to ``cwd`` (the folder MMPose runs in; default:
    the current directory) and are written relative to ``out_dir``, the TOML's folder. An epoch becomes
    ``train_samples`` (default: the persons in the training annotation file, when it is readable) // ``total_batch``
    (default: ``auto_scale_lr.base_batch_size``, else the training ``batch_size``) iterations."""
    translator = _Translator(read_config(path), Path(out_dir), Path.cwd() if cwd is None else Path(cwd),
                             train_samples, total_batch)
    translator.translate()
    config = {key: _type_first(translator.config[key]) for key in sorted(translator.config, key=_ORDER.index)}
    return Imported(Path(path), config, translator.untranslated(), translator.notes)


class _Translator:
    """Builds the posecore config from the MMPose dict, recording which MMPose keys it used (``taken``)."""

    def __init__(self, mmpose: dict[str, Any], out_dir: Path, cwd: Path, train_samples: int | None,
                 total_batch: int | None) -> None:
        self.mm = mmpose
        self.out_dir, self.cwd = out_dir.absolute(), cwd.absolute()
        self.train_samples, self.total_batch = train_samples, total_batch
        self.config: dict[str, Any] = {}
        self.notes: list[str] = []
        self.taken: set[Parts] = set()
        self.why: dict[Parts, str] = {}
        self.defaults: dict[Parts, tuple[Any, str]] = {}
        """MMPose defaults (keys not in the file) that posecore has no key for: value and why."""
        self.decoder: dict[str, Any] | None = None
        self.padding = 1.25
        self._epoch: tuple[int | None, str] | None = None

    def get(self, parts: Parts, default: Any = None) -> Any:
        node: Any = self.mm
        for part in parts:
            if not isinstance(node, (dict, list, tuple)):
                return default
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node

    def take(self, *parts: Parts) -> None:
        self.taken.update(parts)

    def put(self, key: str, value: Any) -> None:
        *tables, last = key.split(".")
        node = self.config
        for table in tables:
            node = node.setdefault(table, {})
        node[last] = plain(value)

    def move(self, source: Parts, key: str, default: Any = None) -> None:
        """``key`` = the value at ``source`` (``default``, MMPose's, when absent; nothing when that is None)."""
        value = self.get(source, default)
        if value is not None:
            self.put(key, value)
            self.take(source)

    def path(self, written: str) -> str | None:
        """An MMPose path (relative to the folder MMPose runs in) relative to the TOML's folder; None for a URL."""
        if "://" in written:
            return None
        return os.path.relpath(os.path.normpath(self.cwd / written), self.out_dir)

    def translate(self) -> None:
        self.codec()
        self.model()
        for split in ("train", "val"):
            self.data(split)
        self.same_as(("test_dataloader",), ("val_dataloader",))
        self.evaluator()
        self.same_as(("test_evaluator",), ("val_evaluator",))
        self.optimizer()
        self.schedule()
        self.loop()
        self.hooks()
        self.runtime()
        datasets = [self.config.get(f"{split}_dataloader", {}).get("dataset", {}) for split in ("train", "val")]
        if any("ann_file" in dataset for dataset in datasets):
            self.notes.insert(0, f"Paths: MMPose's are relative to the folder it runs in, taken as {self.cwd}; here "
                                 f"they are relative to {self.out_dir}.")
        if isinstance(self.get(("auto_scale_lr",)), dict) and not self.get(("auto_scale_lr", "enable"), False):
            self.notes.append("auto_scale_lr.enable is false, as in the config; MMPose's train.py --auto-scale-lr "
                              "makes it true.")

    def codec(self) -> None:
        parts = ("model", "head", "decoder")
        decoder = self.get(parts)
        if not isinstance(decoder, dict) or decoder.get("type") not in _CODEC_OPTIONS:
            return
        self.decoder = decoder
        for name, value in decoder.items():
            if name == "type" or name in _CODEC_OPTIONS[decoder["type"]] and _CODEC_ONLY.get(name, value) == value:
                self.move(parts + (name,), f"codec.{name}")

    def model(self) -> None:
        if self.get(("model", "type")) != "TopdownPoseEstimator":
            return
        self.move(("model", "type"), "model.type")
        preprocessor = ("model", "data_preprocessor")
        if self.get(preprocessor) is None:
            self.defaults[preprocessor] = (None, "MMPose then does not normalise; posecore normalises with ImageNet's "
                                                 "mean and std")
        for name, value in (self.get(preprocessor) or {}).items():
            if name in _PREPROCESSOR and plain(value) == _PREPROCESSOR[name]:
                self.take(preprocessor + (name,))
        channels = self.backbone()
        self.head(channels)
        test = ("model", "test_cfg")
        self.move(test + ("flip_test",), "model.flip_test", False)
        if self.get(test + ("flip_mode",), "heatmap") == "heatmap":  # posecore's flip test averages heatmaps
            self.take(test + ("flip_mode",))
        if self.decoder is not None and self.decoder["type"] != "SimCCLabel":
            self.move(test + ("shift_heatmap",), "codec.shift_heatmap", False)
        if self.get(test + ("output_heatmaps",)) is False:
            self.take(test + ("output_heatmaps",))

    def backbone(self) -> int | None:
        """Translate ``model.backbone``; the channels it gives the head, None when it is not translated."""
        from posecore.pose.mmpose_models import _HRNET_ARCHS, _RESNET_DEPTHS

        parts = ("model", "backbone")
        backbone = self.get(parts)
        kind = backbone.get("type") if isinstance(backbone, dict) else None
        if kind == "ResNet" and backbone.get("depth") in _RESNET_DEPTHS:
            depth = backbone["depth"]
            channels = 2048 if depth >= 50 else 512
            self.move(parts + ("depth",), "model.backbone.depth")
        elif kind == "HRNet" and all(isinstance(self.get(parts + ("extra", s)), dict) for s in _HRNET_ARCHS["w32"]):
            stages = {stage: {key: plain(value) for key, value in self.get(parts + ("extra", stage)).items()
                              if key in _STAGE_KEYS} for stage in _HRNET_ARCHS["w32"]}
            arch = next((name for name, published in _HRNET_ARCHS.items() if published == stages), None)
            self.put(*(("model.backbone.arch", arch) if arch else ("model.backbone.extra", stages)))
            self.take(*(parts + ("extra", stage, key) for stage, keys in stages.items() for key in keys))
            last = stages["stage4"]
            channels = last["num_channels"][0] * (4 if last["block"] == "BOTTLENECK" else 1)
        elif kind == "CSPNeXt":
            channels = self.cspnext(parts, backbone)
        else:
            return None
        self.move(parts + ("type",), "model.backbone.type")
        if backbone.get("in_channels", 3) == 3:
            self.take(parts + ("in_channels",))
        init = backbone.get("init_cfg")
        # init_from takes a whole model's backbone.* weights, as prefix='backbone.' does
        if isinstance(init, dict) and init.get("type") == "Pretrained" and set(init) <= {"type", "checkpoint",
                                                                                          "prefix"} and \
                init.get("prefix", "backbone.") == "backbone.":
            self.move(parts + ("init_cfg", "checkpoint"), "model.backbone.init_from")
            self.take(parts + ("init_cfg", "type"), parts + ("init_cfg", "prefix"))
        return channels

    def cspnext(self, parts: Parts, backbone: dict[str, Any]) -> int | None:
        """Translate CSPNeXt's options (posecore's have MMDetection's names); the channels it gives the head, None
        when its options are not valid."""
        import torch

        from posecore.pose.rtmpose import CSPNeXt

        self.take(parts + ("_scope_",))
        options = {name: backbone[name] for name in CSPNeXt.options.keys if name in backbone and name != "norm_cfg"}
        for name in options:
            self.move(parts + (name,), f"model.backbone.{name}")
        if self.get(parts + ("act_cfg", "type"), "SiLU") == "SiLU":  # posecore's CSPNeXt has SiLU
            self.take(parts + ("act_cfg",))
        norm = backbone.get("norm_cfg")
        if isinstance(norm, dict) and norm.get("type") in _NORM_LAYERS and set(norm) <= {"type", "momentum", "eps"}:
            if norm["type"] != "BN":
                self.put("model.norm", _NORM_LAYERS[norm["type"]])
            # The config's norm_cfg replaces CSPNeXt's whole: what it leaves out is torch's BatchNorm default.
            self.put("model.backbone.norm_cfg", {"momentum": norm.get("momentum", 0.1), "eps": norm.get("eps", 1e-5)})
            self.take(parts + ("norm_cfg",))
        try:
            with torch.device("meta"):  # its layers' shapes, without their weights
                return CSPNeXt(**options).out_channels
        except (ConfigError, KeyError, TypeError):
            return None

    def head(self, channels: int | None) -> None:
        from posecore.pose.skeleton import COCO17

        parts = ("model", "head")
        head = self.get(parts)
        kind = head.get("type") if isinstance(head, dict) else None
        if kind not in ("HeatmapHead", "RTMCCHead"):
            return
        if channels is not None and head.get("in_channels") == channels:
            self.take(parts + ("in_channels",))
        if head.get("out_channels") == COCO17.num_keypoints and self.coco_data():
            self.take(parts + ("out_channels",))
        if self.decoder is not None:
            self.take(parts + ("decoder",))
        if kind == "RTMCCHead":
            self.rtmcc_head(parts)
            return
        self.take(parts + ("type",))  # posecore's default head
        for name in ("deconv_out_channels", "deconv_kernel_sizes", "conv_out_channels", "conv_kernel_sizes"):
            if name in head:
                self.put(f"model.head.{name}", head[name] or [])
                self.take(parts + (name,))
        final = head.get("final_layer")
        if isinstance(final, dict) and set(final) <= {"kernel_size", "padding"}:
            for name in final:
                self.move(parts + ("final_layer", name), f"model.head.final_layer.{name}")
        loss = parts + ("loss",)
        if self.get(loss + ("type",)) == "KeypointMSELoss":
            self.move(loss + ("type",), "model.head.loss.type")
            # MMPose's HeatmapHead passes the keypoint weights and its loss applies them whatever this says.
            self.put("model.head.loss.use_target_weight", True)
            self.take(loss + ("use_target_weight",))
            for name in ("skip_empty_channel", "loss_weight"):
                self.move(loss + (name,), f"model.head.loss.{name}")

    def rtmcc_head(self, parts: Parts) -> None:
        """RTMCCHead and KLDiscretLoss: posecore's keys have MMPose's names."""
        from posecore.pose.rtmpose import KLDiscretLoss, RTMCCHead

        for name in ("type", "input_size", "in_featuremap_size", "simcc_split_ratio", "final_layer_kernel_size"):
            self.move(parts + (name,), f"model.head.{name}")
        for name in RTMCCHead.options.keys["gau_cfg"].keys:
            self.move(parts + ("gau_cfg", name), f"model.head.gau_cfg.{name}")
        loss = parts + ("loss",)
        if self.get(loss + ("type",)) == "KLDiscretLoss":
            for name in ("type", *KLDiscretLoss.options.keys):
                self.move(loss + (name,), f"model.head.loss.{name}")

    def coco_data(self) -> bool:
        return all(self.get((f"{split}_dataloader", "dataset", "type")) == "CocoDataset" for split in ("train", "val"))

    def data(self, split: str) -> None:
        section = f"{split}_dataloader"
        loader = self.get((section,))
        if not isinstance(loader, dict):
            return
        train = split == "train"
        self.move((section, "batch_size"), f"{section}.batch_size")
        for name, default in (("num_workers", 0), ("persistent_workers", False), ("pin_memory", False)):
            self.move((section, name), f"{section}.{name}", default)  # torch's DataLoader defaults
        sampler = {"type": "DefaultSampler", "shuffle": train, **({} if train else {"round_up": False})}
        given = self.get((section, "sampler"))
        for name, value in (given.items() if isinstance(given, dict) else ()):
            if name in sampler and sampler[name] == value:
                self.take((section, "sampler", name))
        if not train and self.get((section, "drop_last")) is False:
            self.take((section, "drop_last"))
        dataset = (section, "dataset")
        if self.get(dataset + ("type",)) != "CocoDataset":
            return
        self.put(f"{section}.dataset", {"type": "CocoKeypoints", "keypoints": "coco17"})
        self.take(dataset + ("type",), dataset + ("data_root",))
        if self.get(dataset + ("data_mode",), "topdown") == "topdown":
            self.take(dataset + ("data_mode",))
        if self.get(dataset + ("test_mode",), False) == (not train):
            self.take(dataset + ("test_mode",))
        root = self.get(dataset + ("data_root",)) or ""
        files = [("ann_file", dataset + ("ann_file",), True), ("img_dir", dataset + ("data_prefix", "img"), True)]
        if not train:
            files.append(("det_file", dataset + ("bbox_file",), False))
        for key, source, under_root in files:
            written = self.get(source, "" if key == "img_dir" else None)
            if written is None:  # MMPose's "none"
                self.take(source)
                continue
            path = self.path(os.path.join(root, written) if under_root else written)
            if path is not None:
                self.put(f"{section}.dataset.{key}", path)
                self.take(source)
        if not train:
            self.move(dataset + ("filter_cfg", "bbox_score_thr"), f"{section}.dataset.det_score_thr")
        augment = self.pipeline(dataset + ("pipeline",), train)
        if train:
            self.padding = augment["padding"]
            self.put("augment", augment)

    def pipeline(self, parts: Parts, train: bool) -> dict[str, Any]:
        """Translate the pipeline at ``parts``; for a training one, the ``[augment]`` it makes."""
        augment: dict[str, Any] = {"flip_prob": 0.0, "scale_prob": 0.0, "rotate_prob": 0.0, "half_body_prob": 0.0,
                                   "shift_prob": 0.0, "padding": self.padding}
        steps = self.get(parts)
        for index, step in enumerate(steps if isinstance(steps, list) else []):
            kind = step.get("type") if isinstance(step, dict) else None
            at = parts + (index,)
            if kind == "LoadImage":
                self.take(at + ("type",))
                if self.get(at + ("backend_args",)) in (None, {"backend": "local"}):
                    self.take(at + ("backend_args",))
            elif kind == "GetBBoxCenterScale" and (train or step.get("padding", 1.25) == self.padding):
                augment["padding"] = step.get("padding", 1.25)
                self.take(at + ("type",), at + ("padding",))
            elif kind == "RandomFlip" and train and step.get("direction", "horizontal") == "horizontal" and \
                    isinstance(step.get("prob", 0.5), (int, float)):
                augment["flip_prob"] = step.get("prob", 0.5)
                self.take(at + ("type",), at + ("prob",), at + ("direction",))
            elif kind == "RandomHalfBody" and train:
                for name, (key, default) in _HALF_BODY.items():
                    augment[key] = step.get(name, default)
                    self.take(at + (name,))
                self.take(at + ("type",))
            elif kind == "RandomBBoxTransform" and train:
                for name, default in _BOX_TRANSFORM.items():  # posecore's keys have MMPose's names and meanings
                    augment[name] = plain(step.get(name, default))
                    self.take(at + (name,))
                self.take(at + ("type",))
            elif kind in ("YOLOXHSVRandomAug", "mmdet.YOLOXHSVRandomAug") and train:
                for name, default in _HSV.items():
                    augment[f"hsv_{name}"] = step.get(name, default)
                    self.take(at + (name,))
                self.take(at + ("type",))
            elif kind == "Albumentation" and train and step.get("keymap") in (None, {"img": "image"}):
                augment["albumentations"] = [_albumentations_2x(transform) for transform in step.get("transforms", [])]
                self.take(at + ("type",), at + ("transforms",), at + ("keymap",))
            elif kind == "TopdownAffine" and self.decoder is not None:
                if plain(step.get("input_size")) == plain(self.decoder.get("input_size")):
                    self.take(at + ("input_size",))
                if step.get("use_udp", False) == (self.decoder["type"] == "UDPHeatmap"):
                    self.take(at + ("use_udp",))
                self.take(at + ("type",))
            elif kind == "GenerateTarget" and train and self.decoder is not None:
                if plain(step.get("encoder")) == plain(self.decoder):
                    self.take(at + ("encoder",))
                if not step.get("use_dataset_keypoint_weights", False):
                    self.take(at + ("use_dataset_keypoint_weights",))
                self.take(at + ("type",))
            elif kind == "PackPoseInputs":
                self.take(at + ("type",))
        keys = CORE_SCHEMA["augment"].keys
        return {name: keys[name].type(augment[name]) for name in keys if name in augment}

    def same_as(self, parts: Parts, original: Parts) -> None:
        """Take each value of ``parts`` equal to the one at the same place in ``original`` (test_dataloader is
        val_dataloader to posecore)."""
        for leaf, value in _leaves(parts, self.get(parts)):
            if plain(value) == plain(self.get(original + leaf[len(parts):], object())):
                self.take(leaf)

    def evaluator(self) -> None:
        parts = ("val_evaluator",)
        if self.get(parts + ("type",)) != "CocoMetric" or "dataset" not in self.config.get("val_dataloader", {}):
            return  # posecore's CocoMetric scores a CocoKeypoints validation set
        self.move(parts + ("type",), "val_evaluator.type")
        ann_file = self.get(parts + ("ann_file",))
        validation = self.config.get("val_dataloader", {}).get("dataset", {}).get("ann_file")
        if ann_file is None or self.path(ann_file) == validation:  # posecore scores against the validation set's
            self.take(parts + ("ann_file",))
        for name in ("nms_thr", "keypoint_score_thr"):
            self.move(parts + (name,), f"val_evaluator.{name}")
        same = {"use_area": True, "iou_type": "keypoints", "score_mode": "bbox_keypoint", "nms_mode": "oks_nms",
                "format_only": False, "outfile_prefix": None, "collect_device": "cpu", "prefix": "coco"}
        for name, value in same.items():
            if self.get(parts + (name,), value) == value:
                self.take(parts + (name,))

    def optimizer(self) -> None:
        wrapper = ("optim_wrapper",)
        if self.get(wrapper + ("type",), "OptimWrapper") == "OptimWrapper":
            self.take(wrapper + ("type",))
        optimizer = wrapper + ("optimizer",)
        kind = self.get(optimizer + ("type",))
        if kind in _WEIGHT_DECAY:
            for name, default in (("type", None), ("lr", None), ("weight_decay", _WEIGHT_DECAY[kind])):
                self.move(optimizer + (name,), f"optim.{name}", default)
            if kind == "SGD":
                self.move(optimizer + ("momentum",), "optim.momentum", 0.0)
        paramwise = wrapper + ("paramwise_cfg",)
        for name in ("norm_decay_mult", "bias_decay_mult"):
            self.move(paramwise + (name,), f"optim.paramwise.{name}")
        if self.get(paramwise + ("bypass_duplicate",)) is True:  # posecore lists a shared parameter once
            self.take(paramwise + ("bypass_duplicate",))
        clip = self.get(wrapper + ("clip_grad",))
        if clip is None:
            self.take(wrapper + ("clip_grad",))
        elif isinstance(clip, dict) and clip.get("type", "norm") == "norm" and clip.get("norm_type", 2) == 2:
            self.move(wrapper + ("clip_grad", "max_norm"), "optim.clip_grad_norm")
            self.take(wrapper + ("clip_grad", "type"), wrapper + ("clip_grad", "norm_type"))

    def schedule(self) -> None:
        schedulers = self.get(("param_scheduler",))
        items: list[tuple[Parts, Any]] = [(("param_scheduler",), schedulers)] if isinstance(schedulers, dict) else \
            [(("param_scheduler", i), item) for i, item in enumerate(schedulers or [])]
        warmup = decay = other = False
        for parts, item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "LinearLR" and not warmup:
                warmup = self.warmup(parts, item)
            elif kind == "MultiStepLR" and not decay:
                decay = self.multistep(parts, item)
            elif kind == "CosineAnnealingLR" and not decay:
                decay = self.cosine(parts, item)
            else:
                other = True
        if not warmup:
            self.put("scheduler.warmup_iters", 0)
        if not (decay or other):
            self.put("scheduler.type", "constant")

    def warmup(self, parts: Parts, item: dict[str, Any]) -> bool:
        """LinearLR from ``start_factor`` to 1 over its first steps: posecore's linear warm-up."""
        end = item.get("end")
        if item.get("begin", 0) != 0 or not isinstance(end, int) or item.get("end_factor", 1.0) != 1:
            return False
        if item.get("by_epoch", True):
            if not item.get("convert_to_iter_based", False):
                return False  # it changes the rate once an epoch
            end = self.iterations(end, parts + ("end",))
            if end is None:
                return False
        self.put("scheduler.warmup_iters", end)
        self.put("scheduler.warmup_ratio", item.get("start_factor", 1 / 3))
        self.take(*(parts + (name,) for name in ("type", "begin", "end", "start_factor", "end_factor", "by_epoch",
                                                 "convert_to_iter_based")))
        return True

    def multistep(self, parts: Parts, item: dict[str, Any]) -> bool:
        """MultiStepLR over the whole run: posecore's step schedule (milestones in epochs with ``by_epoch``, which
        changes the rate at the same iterations whether or not MMEngine converts it to iterations)."""
        by_epoch = item.get("by_epoch", True)
        length = self.get(("train_cfg", "max_epochs" if by_epoch else "max_iters"))
        if item.get("begin", 0) != 0 or (length is not None and item.get("end", length) < length):
            return False
        self.put("scheduler.type", "step")
        if by_epoch:
            self.put("scheduler.by_epoch", True)
        self.move(parts + ("gamma",), "scheduler.gamma", 0.1)
        self.move(parts + ("milestones",), "scheduler.milestones", [])
        self.take(*(parts + (name,) for name in ("type", "begin", "end", "by_epoch", "convert_to_iter_based")))
        return True

    def cosine(self, parts: Parts, item: dict[str, Any]) -> bool:
        """CosineAnnealingLR from ``begin`` to the end of the run, changing the rate each iteration, after the
        warm-up: posecore's cosine decay, flat from the warm-up's end to ``begin``."""
        by_epoch = item.get("by_epoch", True)
        length = self.get(("train_cfg", "max_epochs" if by_epoch else "max_iters"))
        begin, end = item.get("begin", 0), item.get("end", math.inf)
        if length is None or by_epoch and not item.get("convert_to_iter_based", False) or end < length or \
                item.get("T_max", end - begin) != length - begin:
            return False
        warmup = self.config.get("scheduler", {}).get("warmup_iters", 0)
        per_epoch = self.epoch_length()[0] if by_epoch else 1
        if warmup and (begin == 0 or per_epoch is not None and begin * per_epoch < warmup):
            return False  # MMEngine would decay during the warm-up too, multiplying the two
        lr = self.get(("optim_wrapper", "optimizer", "lr"))
        ratio = item.get("eta_min_ratio")
        if ratio is None and item.get("eta_min") is not None:
            if not lr:
                return False
            ratio = round(item["eta_min"] / lr, 12)  # 0.05, not 0.05000000000000001
        self.put("scheduler.type", "cosine")
        if by_epoch:
            self.put("scheduler.by_epoch", True)
        self.put("scheduler.begin", begin)
        self.put("scheduler.min_lr_ratio", ratio or 0.0)
        self.take(*(parts + (name,) for name in ("type", "begin", "end", "T_max", "eta_min", "eta_min_ratio",
                                                 "by_epoch", "convert_to_iter_based")))
        return True

    def loop(self) -> None:
        parts = ("train_cfg",)
        loop = self.get(parts)
        if not isinstance(loop, dict):
            return
        by_epoch = {"EpochBasedTrainLoop": True, "IterBasedTrainLoop": False}.get(loop.get("type"),
                                                                                  loop.get("by_epoch"))
        if by_epoch is None:
            return
        self.take(parts + ("type",), parts + ("by_epoch",))
        self.move(parts + ("max_epochs" if by_epoch else "max_iters",), "train.max_epochs" if by_epoch else
                  "train.max_iters")
        interval = self.get(parts + ("val_interval",), 1 if by_epoch else 1000)  # MMEngine's loop defaults
        if by_epoch:
            interval = self.iterations(interval, parts + ("val_interval",))
        if interval is not None:
            self.put("train.val_interval", interval)
            self.take(parts + ("val_interval",))
        if self.get(parts + ("val_begin",), 1) == 1:
            self.take(parts + ("val_begin",))

    def hooks(self) -> None:
        parts = ("default_hooks",)
        plain = {"timer": "IterTimerHook", "param_scheduler": "ParamSchedulerHook",
                 "sampler_seed": "DistSamplerSeedHook"}
        hooks = self.get(parts)
        for name, hook in (hooks.items() if isinstance(hooks, dict) else ()):
            # A hook that is off (None, enable=False) does nothing; the plain ones posecore always does.
            if hook is None or isinstance(hook, dict) and (hook.get("enable") is False or
                                                           hook == {"type": plain.get(name)}):
                self.take(parts + (name,))
        if self.get(parts + ("logger", "type")) == "LoggerHook":
            self.take(parts + ("logger", "type"))
            self.move(parts + ("logger", "interval"), "train.log_interval", 10)
        if self.get(parts + ("checkpoint", "type")) == "CheckpointHook":
            self.checkpoint(parts + ("checkpoint",))
        for index, hook in enumerate(self.get(("custom_hooks",)) or []):
            kind = hook.get("type") if isinstance(hook, dict) else None
            if kind == "EMAHook":
                self.ema(("custom_hooks", index), hook)
            elif kind in _SWITCH_HOOKS:
                self.switch(("custom_hooks", index), hook)

    def ema(self, parts: Parts, hook: dict[str, Any]) -> None:
        """EMAHook: posecore-ema's ``[ema]``, whose keys are MMEngine's (the hook's priority only orders hooks)."""
        kind = hook.get("ema_type", "ExponentialMovingAverage")
        if kind not in ("ExpMomentumEMA", "ExponentialMovingAverage") or hook.get("begin_epoch", 0) != 0:
            return
        self.put("ema.ema_type", kind)  # MMEngine's default type is not posecore-ema's
        gamma = ("gamma",) if kind == "ExpMomentumEMA" else ()
        for name in ("momentum", *gamma, "interval", "update_buffers", "begin_iter"):
            self.move(parts + (name,), f"ema.{name}")
        self.take(*(parts + (name,) for name in ("type", "ema_type", "begin_epoch", "priority")))

    def switch(self, parts: Parts, hook: dict[str, Any]) -> None:
        """PipelineSwitchHook: ``[augment.switch]``, the augment keys in which its pipeline differs from the
        training one, from its (0-based) ``switch_epoch`` on."""
        epoch = hook.get("switch_epoch")
        if "augment" not in self.config or not isinstance(epoch, int):
            return
        first = {**_COLOURS_OFF, **self.config["augment"]}
        second = {**_COLOURS_OFF, **plain(self.pipeline(parts + ("switch_pipeline",), train=True))}
        self.put("augment.switch", {"epoch": epoch, **{name: value for name, value in second.items()
                                                       if first.get(name) != value}})
        self.take(parts + ("type",), parts + ("switch_epoch",))

    def checkpoint(self, parts: Parts) -> None:
        self.take(parts + ("type",))
        interval = self.get(parts + ("interval",), -1)
        if interval > 0 and self.get(parts + ("by_epoch",), True):
            interval = self.iterations(interval, parts + ("interval",))
        if interval is not None and interval > 0:
            self.put("checkpoint.interval", interval)
            self.take(parts + ("interval",), parts + ("by_epoch",))
        self.put("checkpoint.max_keep", max(0, self.get(parts + ("max_keep_ckpts",), -1)))
        self.take(parts + ("max_keep_ckpts",))
        best = self.metric_name(self.get(parts + ("save_best",)))
        rule = self.get(parts + ("rule",)) or "greater"
        if best is not None and rule in ("greater", "less"):
            self.put("checkpoint.save_best", best)
            self.put("checkpoint.rule", rule)
            self.take(parts + ("save_best",), parts + ("rule",))
        for name, value in (("save_last", True), ("save_optimizer", True), ("save_param_scheduler", True),
                            ("save_begin", 0)):
            if self.get(parts + (name,), value) == value:  # what posecore's checkpoints always do
                self.take(parts + (name,))

    def metric_name(self, name: Any) -> str | None:
        """posecore's name of MMPose's metric ``name`` (``coco/AP`` -> ``AP``), for save_best."""
        from posecore.pose.coco_eval import STAT_NAMES

        if self.config.get("val_evaluator", {}).get("type") != "CocoMetric":
            return None
        prefix = self.get(("val_evaluator", "prefix")) or "coco"
        names = {f"{prefix}/{theirs}": ours for theirs, ours in zip(_COCO_STATS, STAT_NAMES)}
        return STAT_NAMES[0] if name == "auto" else names.get(name)

    def runtime(self) -> None:
        for key, value in (("default_scope", "mmpose"), ("log_level", "INFO"), ("load_from", None), ("resume", False)):
            if self.get((key,)) == value:
                self.take((key,))
        load_from = self.get(("load_from",))
        if isinstance(load_from, str) and self.path(load_from) is not None:
            self.put("load_from", self.path(load_from))
            self.take(("load_from",))
        if self.get(("resume",)) is True:
            self.move(("resume",), "resume")
        self.move(("work_dir",), "work_dir")  # relative to the current directory in both
        for name in ("seed", "diff_rank_seed", "deterministic"):
            self.move(("randomness", name), f"randomness.{name}")
        if self.get(("randomness", "seed"), 0) is None:
            self.take(("randomness", "seed"))
        env = ("env_cfg",)
        for leaf, value in (((*env, "cudnn_benchmark"), False), ((*env, "dist_cfg", "backend"), "nccl")):
            if self.get(leaf) == value:  # posecore's own: no cuDNN benchmark, nccl on CUDA
                self.take(leaf)
        # OpenCV's threads are left as OpenCV sets them (no difference measured with DataLoader workers, and
        # setNumThreads in a forked worker can deadlock).
        self.take(env + ("mp_cfg", "opencv_num_threads"))
        visualizer = ("visualizer",)
        if self.get(visualizer + ("type",)) in ("PoseLocalVisualizer", "Visualizer"):
            self.take(visualizer + ("type",), visualizer + ("name",))
        known = ("LocalVisBackend", "TensorboardVisBackend", "WandbVisBackend", "MLflowVisBackend")
        backends = [(i, b["type"]) for i, b in enumerate(self.get(visualizer + ("vis_backends",)) or [])
                    if isinstance(b, dict) and b.get("type") in known]
        if backends:
            self.put("visualizer.vis_backends", [{"type": kind} for _, kind in backends])
            self.take(*(visualizer + ("vis_backends", i, "type") for i, _ in backends))
        if isinstance(self.get(("auto_scale_lr",)), dict):
            self.move(("auto_scale_lr", "enable"), "auto_scale_lr.enable", False)
            self.move(("auto_scale_lr", "base_batch_size"), "auto_scale_lr.base_batch_size")

    def iterations(self, epochs: int, parts: Parts) -> int | None:
        """``epochs`` in iterations, or None (and why, at ``parts``) when the epoch's length is unknown."""
        per_epoch, why = self.epoch_length()
        if per_epoch is None:
            self.why[parts] = why
            return None
        return epochs * per_epoch

    def epoch_length(self) -> tuple[int | None, str]:
        """Iterations per epoch (or None) and how it was found (or what to do), worked out once."""
        if self._epoch is None:
            total, total_from = self.total_batch, "--total-batch"
            if total is None:
                total = self.get(("auto_scale_lr", "base_batch_size"))
                total_from = "auto_scale_lr.base_batch_size"
            if total is None:
                total = self.get(("train_dataloader", "batch_size"), 1)
                total_from = "train_dataloader.batch_size, one process"
            samples, samples_from = self.train_samples, "--train-samples"
            dataset = self.config.get("train_dataloader", {}).get("dataset", {})
            # As posecore reads a config's paths: lexically from its folder (which need not exist yet).
            ann_file = Path(os.path.abspath(self.out_dir / dataset["ann_file"])) if "ann_file" in dataset else None
            if samples is None and ann_file is not None and ann_file.is_file():
                from posecore.pose.coco import CocoKeypoints

                samples = len(CocoKeypoints(ann_file, self.out_dir / dataset["img_dir"], train=True))
                samples_from = f"in {ann_file}"
            if samples is None:
                self._epoch = (None, f"epochs; posecore counts iterations, an epoch being (training persons // "
                                     f"{total}): rerun with --train-samples N")
            else:
                self._epoch = (samples // total, "")
                self.notes.append(f"An epoch is {samples // total} iterations: {samples} training persons "
                                  f"({samples_from}) // a total batch of {total} ({total_from}). With another total "
                                  f"batch (batch_size x processes), rerun with --total-batch N.")
        return self._epoch

    def untranslated(self) -> list[str]:
        return [line for key, value in self.mm.items() if key in RUNNER_KEYS for line in self.report((key,), value)]

    def report(self, parts: Parts, value: Any) -> Iterator[str]:
        """A line for each setting at or under ``parts`` that was not taken: one for a whole dict when nothing in it
        was, one for each item of a list of dicts."""
        if parts in self.taken or isinstance(value, (dict, list, tuple)) and not value:
            return
        listed = isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value)
        inside = any(len(p) > len(parts) and p[:len(parts)] == parts for p in (*self.taken, *self.why, *self.defaults))
        if not (listed or isinstance(value, dict) and inside):
            why = self.why.get(parts)
            yield f"{_dotted(parts)} = {_python(value)}" + (f"  ({why})" if why else "")
            return
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            yield from self.report(parts + (key,), item)
        for at, (default, why) in self.defaults.items():
            if at[:-1] == parts:
                yield f"{_dotted(at)} = {_python(default)}  ({why})"


def _albumentations_2x(transform: Any) -> Any:
    """An albumentations transform as MMPose's configs give it (1.x) with 2.x's arguments: CoarseDropout's hole
    counts and sizes as [min, max] ranges, ``fill_value`` as ``fill``."""
    spec = plain(transform)
    if not isinstance(spec, dict) or spec.get("type") != "CoarseDropout" or "num_holes_range" in spec:
        return spec
    ranges = {}
    for name, low, high in _HOLES_1X:
        top = spec.pop(high, 8)
        bottom = spec.pop(low, None)
        ranges[name] = [top if bottom is None else bottom, top]
    renamed = {"fill_value": "fill", "mask_fill_value": "fill_mask"}
    return {"type": spec.pop("type"), **ranges, **{renamed.get(name, name): value for name, value in spec.items()}}


def _leaves(parts: Parts, value: Any) -> Iterator[tuple[Parts, Any]]:
    """Each value under ``parts`` that is not a dict or a list of dicts, with where it is."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
        items = enumerate(value)
    else:
        yield parts, value
        return
    for key, item in items:
        yield from _leaves(parts + (key,), item)


def _type_first(value: Any) -> Any:
    """Each table of ``value`` with its ``type`` first, as a reader looks for it."""
    if not isinstance(value, dict):
        return value
    return {key: _type_first(value[key]) for key in sorted(value, key=lambda key: key != "type")}


def _dotted(parts: Parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _python(value: Any) -> str:
    """``value`` as an MMPose config writes it."""
    if isinstance(value, dict):
        if all(isinstance(key, str) and key.isidentifier() for key in value):
            return f"dict({', '.join(f'{key}={_python(item)}' for key, item in value.items())})"
        return "{" + ", ".join(f"{_python(key)}: {_python(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return f"[{', '.join(_python(item) for item in value)}]"
    if isinstance(value, tuple):
        return f"({', '.join(_python(item) for item in value)}{',' if len(value) == 1 else ''})"
    return repr(value)
