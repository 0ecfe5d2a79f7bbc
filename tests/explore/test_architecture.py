"""The HRNet / fusion diagram of notebook 03 follows the model: one marker per fusion point."""

import matplotlib

matplotlib.use("agg")

import pytest

from diffhrnet_lab.config import ModelConfig, embedded_ddpm_dir
from diffhrnet_lab.config import FeatureConfig
from diffhrnet_lab.ddpm import load_bundle
from diffhrnet_lab.errors import ConfigError
from diffhrnet_lab.explore.viz import architecture_of, plot_architecture
from diffhrnet_lab.models.segmenters import build_segmenter


def _markers(fig, gid: str) -> int:
    return sum(1 for line in fig.axes[0].lines if line.get_gid() == gid)


def _image_text(fig) -> str:
    (text,) = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "image_input"]
    return text


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(embedded_ddpm_dir())


@pytest.mark.parametrize("stages, points", [("none", 0), ("late", 4), ("2 4", 6), ("multistage", 10)])
def test_one_marker_per_fusion_point_of_the_built_model(bundle, stages, points):
    cfg = ModelConfig(method="diffhrnet", stages=stages)
    model = build_segmenter(cfg, FeatureConfig(), 7, bundle.bands, bundle)
    assert len(model.points) == points
    for source in (model, cfg):  # the model itself, or the config it is built from
        fig = plot_architecture(source)
        assert _markers(fig, "fusion") == points
        # the default residual model adds the pixel classifier's logits at the output
        assert _markers(fig, "head_fusion") == 0 and _markers(fig, "logit_fusion") == 1
        assert _image_text(fig) == "image"  # HRNet's input, as in the paper (model.rgb_dropout=0)
        matplotlib.pyplot.close(fig)


def test_head_options_are_drawn_when_the_model_has_them(bundle):
    cfg = ModelConfig(method="diffhrnet", stages="none", feature_norm=True, head_fusion=32, aux_weight=0.4,
                      logit_fusion=True)
    model = build_segmenter(cfg, FeatureConfig(), 7, bundle.bands, bundle)
    for source in (model, cfg):
        fig = plot_architecture(source)
        assert (_markers(fig, "fusion"), _markers(fig, "head_fusion"), _markers(fig, "logit_fusion")) == (0, 1, 1)
        matplotlib.pyplot.close(fig)
    assert architecture_of(ModelConfig(method="diffhrnet", aux_weight=0.4, residual=False))["logit_fusion"] is False
    cfg = ModelConfig(method="diffhrnet", residual=True)  # the pixel classifier as the base
    built = architecture_of(build_segmenter(cfg, FeatureConfig(), 7, bundle.bands, bundle))
    assert built["aux"] and built["logit_fusion"] and built == architecture_of(cfg)


def test_hrnet_alone_has_no_fusion_and_the_pixel_classifier_no_backbone():
    arch = architecture_of(ModelConfig(method="hrnet", stages="multistage", head_fusion=32))
    assert arch["stages"] == () and not arch["head_fusion"] and arch["image"] == 1.0  # rgb_dropout needs features
    for rgb_dropout, text in ((0.5, "image in 50%\nof training samples"), (1.0, "no image:\nfeatures only")):
        fig = plot_architecture(ModelConfig(method="diffhrnet", rgb_dropout=rgb_dropout))
        assert _image_text(fig) == text
        matplotlib.pyplot.close(fig)
    assert [len(w) for w in arch["widths"]] == [1, 2, 3, 4] and arch["widths"][3] == [18, 36, 72, 144]
    with pytest.raises(ConfigError, match="no HRNet backbone"):
        architecture_of(ModelConfig(method="ddpm_mlp"))
