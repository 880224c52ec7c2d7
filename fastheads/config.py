"""One typed, frozen configuration for a training run; the defaults are the course notebook's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fastheads.augment import PRESETS, AugmentSpec, parse_augment
from fastheads.cache_key import MAX_VIEWS
from fastheads.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    # --- data
    data: str = ""  # HDF5 file (images, labels) or a folder of images with a file,label CSV
    classes: str | None = None  # class-names file, one per line (line i = class i)
    labels_csv: str | None = None  # for a folder: the CSV (default: the one next to the images)
    # --- model
    weights: str = "imagenet"  # imagenet | none | path to vgg16_weights.h5 / *.weights.h5
    arch: str = "vgg16"  # vgg16 (the course's heads) | v2 (block5 removed, new 4096-4096 head)
    train_layers: int = 1  # 1: new output layer; 2: + fc2; 3: + fc1 (arch vgg16 only)
    image_size: int = 224  # images are resized (bilinear, antialiased) to this square size
    # --- augmentation (ImageDataGenerator's semantics)
    augment: AugmentSpec = field(default_factory=lambda: PRESETS["tp"])
    augment_seed: int = 0  # fixed across repeats, so repeats share one feature store
    # --- training (the notebook's values)
    lr: float = 0.001
    momentum: float = 0.7
    nesterov: bool = True
    decay: float = 1e-6  # Keras 2 SGD decay: lr / (1 + decay * iterations)
    batch_size: int = 32
    epochs: int = 13
    patience: int = 3  # EarlyStopping on `monitor`
    monitor: str = "val_categorical_accuracy"  # also checkpoints the best epoch on it
    val_split: float = 0.3
    seed: int = 0  # split, head initialisation and batch order; repeat r uses seed + r
    repeats: int = 1
    faithful: bool = False  # reproduce the notebook's steps_per_epoch/validation_steps quirks
    # --- speed
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (the frozen base only)
    xla: str = "auto"  # auto | on | off (the frozen base only)
    strategy: str = "auto"  # auto | default | mirrored | multiworker | tpu (see distribute.py)
    # --- feature store
    cache: bool = False
    # K: augmented views per image this run trains on, epoch e on view 1 + e mod K (default: epochs)
    views: int | None = None
    cache_dir: str = "cache"
    cache_dtype: str = "float16"
    # --- output
    out: str = "runs/latest"
    export: str = "every"  # with repeats: every run writes model.keras, or only the best one (best)
    overwrite: bool = False
    resume: bool = False
    verbose: bool = True

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def n_views(self) -> int:
        return self.views if self.views is not None else self.epochs

    def validate(self) -> TrainConfig:
        """Check the numbers up front, with messages that say what was received."""
        if not self.data:
            raise UserError("--data is required: an HDF5 file or a folder of images.")
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.patience >= 0, f"--patience must be 0 or more, got {self.patience}."),
            (self.repeats >= 1, f"--repeats must be at least 1, got {self.repeats}."),
            (0 < self.val_split < 1, f"--val-split must be between 0 and 1 (exclusive), got {self.val_split:g}."),
            (self.lr > 0, f"--lr must be positive, got {self.lr:g}."),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum:g}."),
            (self.decay >= 0, f"--decay must be 0 or more, got {self.decay:g}."),
            (self.views is None or self.views >= 1, f"--views must be at least 1, got {self.views}."),
            (not self.cache or self.augment.is_identity or self.n_views <= MAX_VIEWS,
             f"--views (default: --epochs) must be at most {MAX_VIEWS} with the feature store, got {self.n_views}."),
            (self.cache_dtype in ("float16", "float32"),
             f"--cache-dtype must be float16 or float32, got {self.cache_dtype!r}."),
            (self.export in ("every", "best"), f"--export must be every or best, got {self.export!r}."),
            (self.monitor in MONITORS, f"--monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}."),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        from fastheads.distribute import check_strategy_name
        from fastheads.heads import check_head_args

        check_strategy_name(self.strategy)

        check_head_args(self.arch, self.train_layers)
        return self


MONITORS = ("val_categorical_accuracy", "categorical_accuracy", "val_loss", "loss")


def make_config(**kwargs) -> TrainConfig:
    """Build a config from keyword arguments; `augment` may be a preset name or key=value text."""
    aug = kwargs.get("augment")
    if isinstance(aug, str):
        kwargs["augment"] = parse_augment(aug)
    unknown = set(kwargs) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise UserError(f"unknown training option(s): {', '.join(sorted(unknown))}.")
    return TrainConfig(**kwargs)
