"""Old import paths (before the one-folder-per-stage layout) resolve to the very same objects."""

import importlib

import pytest


def test_old_module_paths_give_the_new_objects():
    from diffhrnet_lab.ddpm.features import FeatureExtractor, tile_features
    from diffhrnet_lab.data.tiling import predict_sliding
    from diffhrnet_lab.models.fusion import DiffHRNet
    from diffhrnet_lab.train import finetune, load_segmenter, validate

    from diffhrnet_lab.features.extractor import FeatureExtractor as FE
    from diffhrnet_lab.features.tile_cache import tile_features as tf
    from diffhrnet_lab.inference.evaluate import validate as v
    from diffhrnet_lab.inference.sliding import predict_sliding as ps
    from diffhrnet_lab.models.segmenters import DiffHRNet as DH, load_segmenter as ls
    from diffhrnet_lab.training.finetune import finetune as ft

    assert finetune is ft and load_segmenter is ls and validate is v
    assert FeatureExtractor is FE and tile_features is tf and DiffHRNet is DH and predict_sliding is ps


@pytest.mark.parametrize("old,name,new", [
    ("diffhrnet_lab.metrics", "scores", "diffhrnet_lab.inference.metrics"),
    ("diffhrnet_lab.sweep", "experiment_config", "diffhrnet_lab.experiments.sweep"),
    ("diffhrnet_lab.ddpm.checkpoints", "write_state", "diffhrnet_lab.training.checkpoints"),
    ("diffhrnet_lab.ddpm.checkpoints", "markdown_table", "diffhrnet_lab.fileio"),
    ("diffhrnet_lab.ddpm.pretrain", "StepBatchSampler", "diffhrnet_lab.training.accelerator"),
    ("diffhrnet_lab.ddpm.archive", "extract_archive", "diffhrnet_lab.features.archive"),
])
def test_aliased_modules_look_names_up_in_their_new_homes(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_a_name_that_never_existed_is_an_attribute_error_naming_the_new_home():
    train = importlib.import_module("diffhrnet_lab.train")
    with pytest.raises(AttributeError, match=r"diffhrnet_lab.train.no_such_thing \(moved to diffhrnet_lab.training.finetune"):
        train.no_such_thing  # noqa: B018
    with pytest.raises(ImportError):
        from diffhrnet_lab.data.tiling import no_such_thing  # noqa: F401
