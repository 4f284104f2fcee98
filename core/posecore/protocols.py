"""What the loop asks of the component types that plugins provide: models, datasets, codecs and metrics.

A plugin returns ``{type name: class}`` from ``model_types()``, ``dataset_types()``, ``codec_types()`` or
``metric_types()`` (see :mod:`posecore.hookspecs`); ``type = "..."`` in ``[model]``,
``[train_dataloader.dataset]``/``[val_dataloader.dataset]``, ``[codec]`` or ``[val_evaluator]`` picks one, and
naming it activates its plugin. Every class declares its options as a class attribute ``options: Section``
(validation, did-you-mean, ``posecore config --reference``); the core builds it with those options as keyword
arguments, plus the few context arguments each protocol names. The core's own types (``posecore.builtin``) are
registered the same way. Exact resume, seeding, AMP, DDP, flip test, TensorBoard images, ``posecore test`` and
``predict`` work for any type that follows these protocols.

A top-down sample flows like this: the dataset's record (a whole image, the person's box and keypoints) is
cropped around the box to the codec's ``input_size`` and augmented by the core; the codec encodes the
keypoints, now in input pixels, as training targets; the model maps the crops to its raw output and computes
the loss against those targets; in evaluation the codec decodes the output back to image coordinates, and the
metric scores them against the records' ground truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence, Union

if TYPE_CHECKING:
    import logging

    import numpy as np
    import torch

    from posecore.config import Section
    from posecore.pose.skeleton import KeypointInfo

Output = Union["torch.Tensor", Sequence["torch.Tensor"]]
"""A model's raw output: one tensor (heatmaps), or several (e.g. SimCC's x and y logits)."""


class RecordSource(Protocol):
    """A record source, built as ``cls(train=..., **options)`` (``train``: the training set, which may, say,
    leave out persons without labelled keypoints)."""

    options: ClassVar[Section]

    @classmethod
    def layout(cls, options: Mapping[str, Any]) -> KeypointInfo:
        """The keypoint layout (names, flip pairs, skeleton, OKS sigmas) these validated options give, without
        reading any file: the model, flip test and metrics need it before (or without) loading data. Raise
        ValueError, naming the key, for options that make no layout."""

    def __len__(self) -> int:
        """The number of person instances."""

    def load(self, index: int) -> dict[str, Any]:
        """Instance ``index``: ``image`` uint8 (H, W, 3) RGB (an array, or an image the crop decodes at the
        scale it needs, as :class:`posecore.pose.coco.EncodedImage`), ``keypoints`` float32 (K, 2) pixel (x, y) with
        integer values at pixel centres, ``visible`` float32 (K,) (0: not labelled), ``box`` float32
        (x, y, w, h); optionally ``image_id`` (int) and ``score`` (the box's detection score) for metrics that
        group instances by image. Raise :class:`posecore.errors.InputError` naming the file for bad data."""


class Codec(Protocol):
    """Keypoints to training targets and network outputs back to keypoints; built as ``cls(**options)``."""

    options: ClassVar[Section]
    input_size: tuple[int, int]
    """The network input (width, height) in pixels: the size the core crops each person to."""

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
        """Training targets for one crop's ``keypoints`` (K, 2) in input pixels and ``visible`` (K,): arrays
        that the DataLoader batches and the model's ``loss`` reads (e.g. ``heatmaps`` and ``weights``)."""

    def decode(self, output: Output, center: np.ndarray | torch.Tensor,
               scale: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (N, K, 2) in image coordinates and scores (N, K) from a batch's raw output, for crops of
        size ``scale`` (N, 2) around ``center`` (N, 2) without rotation."""

    def flip_back(self, output: Output, flip_indices: Sequence[int]) -> Output:
        """The output of mirrored inputs, mirrored back and with left/right keypoints swapped
        (``output[:, flip_indices]`` in keypoint order): the flip test averages it with the plain output."""

    def crop_matrix(self, center: np.ndarray, scale: np.ndarray, rotation_deg: float,
                    output_size: tuple[int, int]) -> np.ndarray:
        """Optional: the (2, 3) matrix taking image coordinates into the crop (``decode`` undoes it). Without it
        the core's :func:`posecore.pose.transforms.affine_matrix` is used (pixel centres at integers; the
        crop's centre at ``((w - 1) / 2, (h - 1) / 2)``); a codec that follows another convention (MMPose's,
        UDP's) gives its own."""

    def check_output(self, output: Output) -> None:
        """Raise :class:`posecore.errors.ConfigError` if a model's output (of a zero batch of one crop) does not
        fit this codec, saying which option to change."""


class Model(Protocol):
    """A ``torch.nn.Module`` built as ``cls(num_keypoints=K, **options)``.

    ``model(crops)`` maps normalised crops (N, 3, H, W) to the raw output the codec decodes; the loop calls it
    through DistributedDataParallel under torchrun and under the AMP plugin's autocast, so all learning
    happens in ``forward``. ``posecore.load_model`` returns such a model.
    """

    options: ClassVar[Section]

    def loss(self, output: Output, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The scalar training loss of ``output`` against the codec's targets in ``batch``."""

    def load_pretrained(self, log: logging.Logger) -> None:
        """Optional: load pretrained parts (e.g. an ImageNet backbone, ``backbone.init_from``). Called once by a
        training run that starts from scratch: not when it resumes or loads ``load_from``/``model.init_weights``,
        and never by ``posecore test``, ``predict`` or ``load_model``, whose weights replace them anyway."""


class Metric(Protocol):
    """Scores the whole validation set; built as ``cls(layout=..., dataset=..., **options)`` (``layout``: the
    keypoint layout; ``dataset``: the validated ``val_dataloader.dataset`` options, e.g. its annotation file).
    Called on one process (rank 0) only."""

    options: ClassVar[Section]
    results_file: ClassVar[str]
    """Optional: the file name ``posecore test`` writes the results to in the run folder (default
    ``predictions.json``)."""

    def __call__(self, predictions: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], list[Any] | None]:
        """Metrics by name (``{"PCK": 0.91}``), and optionally results to write as JSON (``posecore test``).

        ``predictions`` holds the whole validation set in dataset order: ``pred`` (N, K, 2) keypoints and
        ``pred_score`` (N, K) in image coordinates, the records' ``keypoints``, ``visible``, ``box`` (and
        ``image_id``, ``score`` where the dataset gives them), and each crop's ``center`` and ``scale``.
        """
