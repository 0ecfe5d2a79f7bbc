"""The one table of named methods that experiments compare.

A *method* is a segmenter (``models.segmenters.SEGMENTERS``) plus the model settings that make it
a variant.  The demo, the sweeps and the label-efficiency experiment all name methods from here,
so "Diff-HRNet" means the same model in every table of the kit.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig, replace
from ..errors import ConfigError

# the fused model's additions switched off: the variants below name every one they use, so that a
# variant means the same model whatever the profile's Diff-HRNet defaults are
_PLAIN = {"feature_norm": False, "head_fusion": 0, "aux_weight": 0.0, "logit_fusion": False, "residual": False,
          "detach_base": False, "rgb_lr": 1.0, "rgb_dropout": 0.0, "correction_scale": 1.0,
          "correction_dropout": 0.0, "rgb_norm": "dataset", "correction": "logits"}

# name → (label for tables and plots, ModelConfig changes)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "hrnet": ("HRNet", {"method": "hrnet"}),
    "ddpm_mlp": ("DDPM pixel classifier", {"method": "ddpm_mlp"}),
    "diffhrnet": ("Diff-HRNet", {"method": "diffhrnet"}),  # the profile's default fusion settings
    "late": ("Diff-HRNet (late)", {**_PLAIN, "method": "diffhrnet", "stages": "late"}),
    "multistage": ("Diff-HRNet (multistage)", {**_PLAIN, "method": "diffhrnet", "stages": "multistage"}),
    # the research variants of BENCHMARKS.md ("What was tried"), each one change or a named combination
    "ms_norm": ("multistage, standardised streams", {**_PLAIN, "method": "diffhrnet", "stages": "multistage",
                                                            "feature_norm": True}),
    "head": ("features into the head", {**_PLAIN, "method": "diffhrnet", "stages": "none", "feature_norm": True,
                                        "head_fusion": 32}),
    "head_aux": ("head + features-only head, logits added", {"method": "diffhrnet", "stages": "none",
                                                             "feature_norm": True, "head_fusion": 32,
                                                             "aux_weight": 0.4, "logit_fusion": True}),
    "ms_all": ("multistage + head + features-only head", {"method": "diffhrnet", "stages": "multistage",
                                                          "feature_norm": True, "head_fusion": 32,
                                                          "aux_weight": 0.4, "logit_fusion": True}),
    # round 4 (BENCHMARKS.md): warm start from the pixel classifier inside the run
    "ms_res": ("ms_norm + pixel classifier base, HRNet residual", {**_PLAIN, "method": "diffhrnet", "stages": "multistage",
                                                                   "feature_norm": True, "residual": True}),
    "ms_res_slow": ("ms_res, HRNet layers at lr x0.1", {**_PLAIN, "method": "diffhrnet", "stages": "multistage",
                                                        "feature_norm": True, "residual": True, "rgb_lr": 0.1}),
    # round 5: the base trained as the pixel classifier alone is trained, HRNet fitting only what it leaves
    "ms_res_det": ("ms_res, base on its own loss", {**_PLAIN, "method": "diffhrnet", "stages": "multistage",
                                                    "feature_norm": True, "residual": True, "aux_weight": 1.0,
                                                    "detach_base": True}),
    # round 6: HRNet's correction from the features alone, or from them with the image often missing
    "ms_res_feat": ("ms_res, HRNet without the image", {**_PLAIN, "method": "diffhrnet", "stages": "multistage",
                                                        "feature_norm": True, "residual": True, "rgb_dropout": 1.0}),
    "ms_res_rdrop": ("ms_res, image dropped for half the samples", {**_PLAIN, "method": "diffhrnet",
                                                                    "stages": "multistage", "feature_norm": True,
                                                                    "residual": True, "rgb_dropout": 0.5}),
    # round 7: the features-only correction, with the base also trained on its own loss (deep supervision)
    "ms_feat_aux": ("ms_res_feat + base's own loss (0.4)", {**_PLAIN, "method": "diffhrnet", "stages": "multistage",
                                                           "feature_norm": True, "residual": True,
                                                           "rgb_dropout": 1.0, "aux_weight": 0.4}),
    # round 9: ms_res scored with half of HRNet's correction (the mean of the fused model's and its base's logits)
    "ms_res_half": ("ms_res, half the correction when scoring", {**_PLAIN, "method": "diffhrnet", "stages": "multistage",
                                                                 "feature_norm": True, "residual": True,
                                                                 "correction_scale": 0.5}),
    # round 11: the halving trained in: the correction left out for half the training samples
    "ms_res_cdrop": ("ms_res_half, correction dropped for half the samples", {
        **_PLAIN, "method": "diffhrnet", "stages": "multistage", "feature_norm": True, "residual": True,
        "correction_scale": 0.5, "correction_dropout": 0.5}),
    # round 12: HRNet's image input standardised per crop / window, so a scene's colour cast cannot steer it
    "ms_res_inorm": ("ms_res_half, HRNet's input standardised per window", {
        **_PLAIN, "method": "diffhrnet", "stages": "multistage", "feature_norm": True, "residual": True,
        "correction_scale": 0.5, "rgb_norm": "window"}),
    # round 15: HRNet only propagates the base's logits (where regions end), adding no class evidence
    "ms_prop": ("ms_res, HRNet propagates the base's logits", {
        **_PLAIN, "method": "diffhrnet", "stages": "multistage", "feature_norm": True, "residual": True,
        "correction": "propagate"}),
    # round 19: self-training (train.teacher); the teacher is another method's run of the same cell, see TEACHERS
    "diffhrnet_st": ("Diff-HRNet, self-trained on the unlabelled scenes", {"method": "diffhrnet"}),
    "ddpm_mlp_st": ("DDPM pixel classifier, self-trained on Diff-HRNet's labels", {"method": "ddpm_mlp"}),
    "diffhrnet_cbst": ("Diff-HRNet, class-balanced self-training", {"method": "diffhrnet"}),
    # round 25 (rejected): the base is the finished pixel classifier of the same cell, frozen (model.base_init, BASES)
    "diffhrnet_fb": ("Diff-HRNet on the frozen pixel classifier", {"method": "diffhrnet"}),
}

# student method → (the method whose run of the same (fold, budget, seed) labels the training scenes
# the budget left out, the student's pseudo-label settings); ``training.pseudo``.  The student
# trains on the same labelled scenes as its teacher.
TEACHERS: dict[str, tuple[str, dict[str, Any]]] = {
    "diffhrnet_st": ("diffhrnet", {"pseudo_threshold": 0.9, "pseudo_class_fraction": 0.0}),  # round 19
    "ddpm_mlp_st": ("diffhrnet", {"pseudo_threshold": 0.9, "pseudo_class_fraction": 0.0}),
    "diffhrnet_cbst": ("diffhrnet", {"pseudo_threshold": 0.0, "pseudo_class_fraction": 0.2}),  # round 19b, CBST
}


# fused method → the method whose finished run of the same (fold, budget, seed) becomes its frozen
# base (``model.base_init``): the fused model is that classifier plus HRNet's correction by construction
BASES: dict[str, str] = {"diffhrnet_fb": "ddpm_mlp"}


def check_methods(names) -> list[str]:
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    return list(names)


def check_teachers(names) -> None:
    """Every self-trained method comes after its teacher, and every method on a frozen base after
    that base's method: they read those finished runs."""
    names = list(names)
    for i, m in enumerate(names):
        if m in TEACHERS and TEACHERS[m][0] not in names[:i]:
            raise ConfigError(f"method '{m}' learns from the labels of '{TEACHERS[m][0]}' of the same run: "
                              f"list '{TEACHERS[m][0]}' before it")
        if m in BASES and BASES[m] not in names[:i]:
            raise ConfigError(f"method '{m}' starts from the finished '{BASES[m]}' run of the same cell: "
                              f"list '{BASES[m]}' before it")


def method_model(model: ModelConfig, name: str) -> ModelConfig:
    """``model`` turned into method ``name`` (the other settings kept)."""
    check_methods([name])
    return replace(model, **METHODS[name][1])


def label(name: str) -> str:
    return METHODS[name][0] if name in METHODS else name
