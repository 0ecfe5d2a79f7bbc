"""One source of defaults: typed configs per stage, and the smoke / quick / full profiles.

Notebooks, the CLI and sweeps all build their settings with :func:`profile_config`, then
override single fields; nothing else in the kit hard-codes a default.

* ``smoke``: CI; every notebook in seconds on a 2-core CPU.  Numbers prove the code runs, not
  that the method works.
* ``quick``: a laptop CPU in minutes; enough to see the method's effect on the embedded samples.
* ``colab``: one 16 GB T4 (free Colab): each notebook in about 30 minutes.  Sized with
  :func:`diffhrnet_lab.explore.estimates.estimate` (FLOPs at 25 % of the T4's 65 TFLOP/s fp16 peak;
  peak memory counted on the ``meta`` device), which every notebook prints before its long cells.
  The T4 has no bf16, so mixed precision is ``auto-fp16``: fp16 there, bf16 on newer cards.
* ``full``: a GPU and paper-scale settings.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

PROFILES = ("smoke", "quick", "colab", "full")
PACKAGE_ROOT = Path(__file__).resolve().parent


SAMPLES_ENV = "DHL_SAMPLES_DIR"


def samples_dir() -> Path:
    """The embedded samples (tiles and DDPM bundles), wherever the kit runs from.

    ``$DHL_SAMPLES_DIR`` when set; else the package data of an installed wheel
    (``diffhrnet_lab/data_samples``, mapped from the repository's ``data_samples/`` by ``setup.py``),
    so that ``pip install diffhrnet_lab`` works from any working directory; else ``data_samples/``
    beside the package in a source checkout (editable installs, ``PYTHONPATH``).
    """
    env = os.environ.get(SAMPLES_ENV)
    if env:
        return Path(env)
    packaged = Path(str(importlib.resources.files(__package__).joinpath("data_samples")))
    if packaged.is_dir():
        return packaged
    checkout = PACKAGE_ROOT.parent / "data_samples"
    if checkout.is_dir():
        return checkout
    raise ConfigError(f"the embedded samples are missing: neither {packaged} (installed package data) nor "
                      f"{checkout} (source checkout) exists; reinstall the kit or set ${SAMPLES_ENV} to a copy "
                      "of the repository's data_samples/ folder")


def embedded_ddpm_dir() -> Path:
    """The DDPM bundle shipped with the samples (``data_samples/ddpm_tiny``)."""
    return samples_dir() / "ddpm_tiny"


def embedded_dubai_dir() -> Path:
    """The real Dubai aerial scenes embedded with the samples (``data_samples/dubai_aerial``): tiles
    1-4 of the Humans in the Loop / MBRSC dataset (CC0), byte-identical to the shared copy."""
    return samples_dir() / "dubai_aerial"


def embedded_dubai_ddpm_dir() -> Path:
    """The DDPM bundle pretrained on the embedded Dubai images (``data_samples/ddpm_dubai``): what the
    demo fuses, so that ``make demo`` needs no pretraining."""
    return samples_dir() / "ddpm_dubai"


def dubai_dir() -> Path | None:
    """The real Dubai aerial tiles: ``$DHL_DUBAI_DIR`` when set, else the embedded copy (``None`` when
    neither exists).  A set variable naming no folder is an error rather than a silent fallback, so
    a mistyped path never runs an experiment on other data than intended."""
    env = os.environ.get("DHL_DUBAI_DIR")
    if env:
        if not Path(env).is_dir():
            raise ConfigError(f"DHL_DUBAI_DIR={env}: no such folder (unset it to use {embedded_dubai_dir()})")
        return Path(env)
    return embedded_dubai_dir() if (embedded_dubai_dir() / "images").is_dir() else None


def default_profile() -> str:
    """``$DHL_PROFILE`` when set (tests set ``smoke``), else ``quick``."""
    prof = os.environ.get("DHL_PROFILE", "quick")
    check_profile(prof)
    return prof


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile '{name}'; choose one of {', '.join(PROFILES)}")
    return name


def profile_folder(default: str | Path, profile: str) -> Path:
    """``default`` for the ``quick`` profile (the committed outputs' profile, whose folder names the
    notebooks and README quote), else ``<default>_<profile>``. The suffix keeps a smoke run (``make
    test``) and a quick one out of each other's checkpoints and results: fine-tuning resumes what it
    finds in its folder (a smoke run's batch size would stop a quick run there), and a sweep's table
    reads every result in its folder."""
    return Path(default) if profile == "quick" else Path(f"{default}_{profile}")


@dataclass
class DataConfig:
    """Where the labelled tiles are and how they are cropped and split."""

    root: str = ""  # empty: the embedded samples' labelled/ folder
    scheme: str = "samples"  # of a generic folder; a named dataset brings its own (data.layouts)
    dataset: str = ""  # isprs_potsdam, isprs_vaihingen, loveda, landcover_ai, dubai; empty: images/ + masks/
    crop_size: int = 128
    batch_size: int = 4
    val_groups: tuple[str, ...] | None = None
    train_groups: tuple[str, ...] | None = None  # only these scenes train (the demo's one named scene)
    val_fraction: float = 0.2
    test_fraction: float = 0.0  # >0: this share of the scenes is kept out of training *and* validation (sweeps report it)
    label_budget: int | float | None = None
    max_per_group: int = 0  # >0: only the first N tiles of each scene (smoke runs on real data)
    photometric: float = 0.0  # training: per-band gain and offset jitter of this strength (images in [-1, 1])
    seed: int = 0

    def resolved_root(self) -> Path:
        return Path(self.root) if self.root else samples_dir() / "labelled"


@dataclass
class DDPMConfig:
    """DDPM pretraining on an unlabelled pool (diffusers ``unconditional_image_generation`` recipe)."""

    preset: str = "tiny"
    pool: str = ""  # empty: the embedded samples' unlabelled/ folder
    sample_size: int = 64  # training crop
    beta_schedule: str = "linear"  # or "cosine"
    num_train_timesteps: int = 1000
    batch_size: int = 16  # global: split across processes under `accelerate launch`
    steps: int = 1500
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_max_decay: float = 0.999
    mixed_precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp32; auto-fp16: fp16 where auto picks fp32 on a GPU
    log_every: int = 10
    log_with: str = ""  # tensorboard, wandb or mlflow: also log loss and lr there (accelerate trackers)
    sample_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    num_workers: int = 0
    channels_last: bool = False  # NHWC activations (tensor cores prefer them): inside the graph when compiled
    compile: str = ""  # GPUs: torch.compile mode, "" off, "default", "max-autotune", "reduce-overhead" (CUDA graphs)
    seed: int = 0


@dataclass
class FeatureConfig:
    """Which DDPM features to extract (DDPM-Seg defaults: t ∈ {50, 150, 250}, early decoder blocks)."""

    checkpoint: str = ""  # empty: the embedded tiny DDPM
    timesteps: tuple[int, ...] = (50, 150, 250)
    blocks: tuple[int, ...] = (0, 1)
    noise_seed: int = 0
    cache: bool = False  # fine-tuning: compute each tile's features once and crop them with the image
    cache_dir: str = ""  # keep those features on disk, shared by every run with the same DDPM
    cache_window: int = 128  # window of the tiled whole-tile extraction
    cache_dtype: str = "float16"  # or "uint8": per-channel 8-bit quantisation, half the bytes


@dataclass
class ModelConfig:
    """Which segmenter: ``hrnet`` (baseline), ``diffhrnet`` (DDPM features fused) or ``ddpm_mlp``
    (DDPM-Seg's pixel classifier on DDPM features alone)."""

    method: str = "diffhrnet"
    variant: str = "w18_small"
    stages: str = "multistage"  # none | late | multistage | e.g. "2 4"
    fusion: str = "gated"  # concat | add | gated
    finetune_ddpm: bool = False
    head_dropout: float = 0.1  # HRNetV2 head (mmseg's dropout_ratio); 0 for runs that must match across process counts
    feature_norm: bool = True  # standardise each DDPM stream per channel before fusing (SatDiFuser, ODISE; BENCHMARKS.md)
    head_fusion: int = 0  # >0: every stream, projected to this many channels, also enters the head at 1/4
    aux_weight: float = 0.0  # >0: a features-only pixel classifier beside HRNet, its loss weighted so (deep supervision)
    logit_fusion: bool = False  # add that classifier's logits to HRNet's (needs aux_weight > 0)
    residual: bool = True  # start as the pixel classifier: its logits + HRNet's, HRNet's classifier zero at step 0 (BENCHMARKS.md)
    detach_base: bool = False  # residual: that classifier learns from its own loss only (aux_weight), HRNet from the sum
    rgb_lr: float = 1.0  # learning-rate factor of HRNet's own layers (backbone, head) in the fused model
    rgb_dropout: float = 0.0  # fused model: chance HRNet's image input is zeroed per training sample; 1: never sees it
    correction_dropout: float = 0.0  # residual model, training: chance HRNet's correction is left out for a sample
    correction_scale: float = 0.5  # residual model, scoring only: share of HRNet's correction kept (BENCHMARKS.md round 9)
    rgb_norm: str = "dataset"  # HRNet's image input: dataset band statistics, or "window": each crop/window standardised per band
    correction: str = "logits"  # residual model: HRNet adds logits, or "propagate": it only spreads the base's along the image
    init_timm: str = ""  # ImageNet start for the backbone: a timm name (hrnet_w18_small_v2.ms_in1k) or a .safetensors file
    base_blocks: str = ""  # residual model: decoder blocks its pixel-classifier base reads, e.g. "0,1" ("": all of features.blocks)
    fusion_blocks: str = ""  # decoder blocks fused into HRNet (stages, head), e.g. "1,2" ("": all of features.blocks)
    base_init: str = ""  # residual model: a finished ddpm_mlp run whose classifier becomes the base, frozen (round 25)


# ModelConfig fields added after the first checkpoints and runs were written, with what the code did
# before each existed: a saved config that lacks one meant this (resume checks, reused runs)
MODEL_FIELDS_BEFORE = {"feature_norm": False, "head_fusion": 0, "aux_weight": 0.0, "logit_fusion": False,
                       "residual": False, "detach_base": False, "rgb_lr": 1.0,
                       "rgb_dropout": 0.0, "correction_scale": 1.0, "correction_dropout": 0.0,
                       "rgb_norm": "dataset", "correction": "logits", "base_blocks": "", "fusion_blocks": "",
                       "base_init": ""}
# ModelConfig fields that change how trained weights are scored, not what they learn: a finished run
# is scored again with a new value (experiments.label_efficiency) instead of being trained again
SCORING_ONLY = ("correction_scale",)


@dataclass
class TrainConfig:
    """Fine-tuning on the labelled tiles (mmsegmentation-style poly LR, CE with ignore index)."""

    steps: int = 400
    lr: float = 2e-3
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_steps: int = 20
    class_weights: str = "none"  # none | inverse_sqrt (of class pixel frequency)
    eval_every: int = 100
    eval_window: int = 128  # 0: whole tiles in one forward pass (memory grows with the tile)
    log_every: int = 10  # losses are read back from the device (a host sync) every this many steps
    log_with: str = ""  # tensorboard, wandb or mlflow: loss, lr, validation mIoU and predictions (<out>/logs)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"
    sync_bn: bool = True  # several GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    norm_eval: bool = False  # BatchNorm uses its running statistics (mmseg's norm_eval): for tiny per-device
    #                          batches or a pretrained backbone; makes results independent of the process count
    num_workers: int = 0
    channels_last: bool = False
    compile: str = ""
    seed: int = 0
    # self-training (training.pseudo): a finished run whose predictions label the training scenes the
    # label budget left out; pixels below the threshold of its softmax are ignored
    teacher: str = ""
    pseudo_threshold: float = 0.9
    pseudo_class_fraction: float = 0.0  # >0: per class, only its most confident fraction of pixels (CBST)


@dataclass
class LabelEfficiencyConfig:
    """The few-label experiment (issue: does the DDPM help when labels are scarce?).

    On a dataset of scenes (Dubai: ``Tile_1`` ... ``Tile_4``): pretrain the DDPM on *all* images as
    unlabelled data, hold a scene out for scoring, fine-tune on 1, 2 labelled scenes with each method
    and seed.  ``held_out="all"`` rotates: every scene is held out in turn (one fold each), which
    turns one scene's noise into an average over scenes.  Steps of 0 mean the profile's
    ``ddpm.steps`` / ``train.steps``.  Gains over the baselines get a paired bootstrap interval over
    the (fold, seed) pairs: ``bootstrap_resamples`` draws from a generator seeded ``bootstrap_seed``,
    so the same runs always give the same interval.
    """

    held_out: str = "all"  # "all": every scene in turn (the protocol of BENCHMARKS.md), or one scene's name
    budgets: tuple[int, ...] = (1, 2)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("hrnet", "ddpm_mlp", "diffhrnet")
    ddpm_steps: int = 0
    train_steps: int = 0
    bootstrap_resamples: int = 10_000
    bootstrap_seed: int = 0
    confidence: float = 0.95


@dataclass
class DemoConfig:
    """``make demo``: few-label comparison on the embedded Dubai scenes.

    Every method trains on the one labelled scene ``train_scene`` and is scored once on
    ``test_scene``, which no method trained on.  With ``select_scene`` empty (the default) there is
    no selection: the last step is scored, as in the label-efficiency rotation, so the demo follows
    that measurement's protocol (and round 20's demo with a selection scene picked the last step
    for every method anyway).  Naming a ``select_scene`` picks each method's best step on it, a third
    disjoint scene, every ``eval_every`` steps (notebook 03 teaches that way).  ``max_per_group`` > 0
    keeps only the first N images of each scene (the smoke profile, to run in seconds).  Steps of 0
    mean the profile's ``train.steps`` / ``train.eval_every``.
    """

    train_scene: str = "Tile_2"
    select_scene: str = ""
    test_scene: str = "Tile_1"
    methods: tuple[str, ...] = ("hrnet", "ddpm_mlp", "diffhrnet")
    train_steps: int = 0
    eval_every: int = 0
    max_per_group: int = 0


@dataclass
class ProfileConfig:
    """Everything a run needs, per stage."""

    name: str = "quick"
    data: DataConfig = field(default_factory=DataConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    label_efficiency: LabelEfficiencyConfig = field(default_factory=LabelEfficiencyConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {"data": {"crop_size": 64, "batch_size": 2},
              "train": {"steps": 6, "eval_every": 3, "eval_window": 64, "checkpoint_every": 3, "warmup_steps": 1},
              "ddpm": {"steps": 4, "batch_size": 4, "sample_size": 32, "warmup_steps": 1, "log_every": 1,
                       "sample_every": 4, "checkpoint_every": 2},
              "label_efficiency": {"held_out": "Tile_1", "budgets": (1,), "seeds": (0,), "train_steps": 2,
                                   "bootstrap_resamples": 200},
              "demo": {"max_per_group": 1, "eval_every": 6}},
    "quick": {"data": {"crop_size": 96, "batch_size": 4}, "train": {"steps": 300},  # the rest: dataclass defaults
              "demo": {"train_steps": 150, "eval_every": 75},  # the rotation's steps (label_efficiency.train_steps)
              # decoder blocks 1 and 2: round 20's rotation (BENCHMARKS.md), +2.5 / +1.9 mIoU for Diff-HRNet
              "features": {"blocks": (1, 2)},
              "label_efficiency": {"ddpm_steps": 600, "train_steps": 150}},
    # one T4, 16 GB: estimates (explore/estimates.py, T4 at 25 % of peak) ~25 min for 01's DDPM
    # (small U-Net, 128², batch 32, ~11 GB), ~8 min and ~2 GB per Diff-HRNet run (03 runs two, 04 three)
    "colab": {"data": {"crop_size": 256, "batch_size": 8},
              "train": {"steps": 1500, "eval_every": 300, "eval_window": 256, "checkpoint_every": 300,
                        "warmup_steps": 50, "mixed_precision": "auto-fp16", "num_workers": 2},
              "ddpm": {"preset": "small", "sample_size": 128, "batch_size": 32, "steps": 4000, "lr": 2e-4,
                       "warmup_steps": 200, "sample_every": 1000, "checkpoint_every": 500,
                       "mixed_precision": "auto-fp16", "num_workers": 2},
              "label_efficiency": {"seeds": (0,), "ddpm_steps": 1500, "train_steps": 300}},
    "full": {"data": {"crop_size": 512, "batch_size": 16},
             "model": {"variant": "w48"},
             "train": {"steps": 80_000, "lr": 1e-3, "eval_every": 4000, "eval_window": 512, "checkpoint_every": 2000,
                       "warmup_steps": 1000, "num_workers": 4, "compile": "reduce-overhead"},
             # GPU defaults measured with `bench pipeline` (BENCHMARKS.md, H100): torch.compile makes the
             # base U-Net step 1.5x faster, channels-last inside the compiled graph 1.12x more (a
             # channels-last module made it slower); CUDA graphs (compile "reduce-overhead") make an
             # HRNet step 2.4x faster; cached features make a Diff-HRNet step 1.6-1.75x faster than
             # running the DDPM inside it.
             "ddpm": {"preset": "base", "sample_size": 256, "batch_size": 32, "steps": 100_000, "lr": 1e-4,
                      "warmup_steps": 500, "ema_max_decay": 0.9999, "sample_every": 5000,
                      "checkpoint_every": 2500, "num_workers": 4, "compile": "default", "channels_last": True},
             "features": {"blocks": (1, 2), "cache": True}},
}


def profile_config(name: str | None = None) -> ProfileConfig:
    """The config of profile ``name`` (``None``: :func:`default_profile`)."""
    name = check_profile(name or default_profile())
    cfg = ProfileConfig(name=name)
    for section, values in _OVERRIDES[name].items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    return cfg


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that names the valid fields when a change names an unknown one."""
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"{type(obj).__name__} has no field(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(obj, **changes)
