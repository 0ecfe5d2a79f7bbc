"""Notebook 03's protocol: train on one scene, pick the best step on a second, report on a third.

Picking the best step on the scene that is then reported flatters every model (the selection
looked at the test labels).  The demo (``experiments.demo``) already runs the honest protocol on
the embedded Dubai scenes; these helpers let the notebook reuse it (:func:`demo_configs` builds
the runs) on the Dubai scenes by default or on any labelled folder whose scenes the notebook names,
and score each selected checkpoint once on the third scene.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from ..config import ProfileConfig, embedded_dubai_ddpm_dir, replace
from ..data.datasets import first_per_group
from ..experiments.demo import demo_configs, demo_data, demo_scenes
from .notebook import StagePaths


@dataclasses.dataclass(frozen=True)
class ThreeScenes:
    """The runs of one three-scene comparison and where their data come from."""

    data: Path
    ddpm: Path
    scheme: str
    scenes: dict[str, str]  # train / [select /] test → scene name
    configs: dict[str, ProfileConfig]  # method key → its fine-tuning config

    def test_pairs(self):
        """The test scene's tiles (the first ``demo.max_per_group`` in the smoke profile)."""
        from ..data.datasets import find_pairs

        cfg = next(iter(self.configs.values()))
        pairs = first_per_group(find_pairs(self.data), cfg.data.max_per_group)
        return [p for p in pairs if p.group == self.scenes["test"]]


def three_scene_runs(cfg: ProfileConfig, paths: StagePaths, own_data: bool, methods: Sequence[str],
                     cache_dir: str | Path, train_scene: str = "", select_scene: str = "", test_scene: str = "",
                     steps: int = 0) -> ThreeScenes:
    """The demo's runs for ``methods`` with ``cfg.model``'s settings.  With ``own_data`` (the
    notebook was given a ``data_root``) they read ``paths.data``; otherwise the embedded Dubai scenes
    and, unless a DDPM was named, the Dubai DDPM (the samples' 4-band DDPM cannot read RGB).  Empty
    scene names take ``cfg.demo``'s (whose selection scene is empty: the last step is scored)."""
    data = paths.data if own_data else demo_data(None)
    ddpm = paths.ddpm if own_data or paths.ddpm_from != "embedded" else embedded_dubai_ddpm_dir()
    demo = replace(cfg.demo, methods=tuple(methods), train_scene=train_scene or cfg.demo.train_scene,
                   select_scene=select_scene or cfg.demo.select_scene, test_scene=test_scene or cfg.demo.test_scene,
                   train_steps=steps or cfg.demo.train_steps)
    configs = demo_configs(dataclasses.replace(cfg, demo=demo), Path(data), Path(ddpm), Path(cache_dir))
    scheme = paths.scheme if own_data else next(iter(configs.values())).data.scheme
    configs = {k: dataclasses.replace(c, data=replace(c.data, scheme=scheme, dataset=paths.dataset if own_data else ""))
               for k, c in configs.items()}
    return ThreeScenes(Path(data), Path(ddpm), scheme, demo_scenes(demo), configs)


def score_selected(run: ThreeScenes, outs: dict[str, str | Path], device: str = "cpu") -> tuple[dict, dict, list]:
    """Each method's selected checkpoint (``outs[key]/best``) scored once on the whole test-scene tiles;
    returns the predictions and ``(confusion matrix, Scores)`` per method, and the test pairs.
    DDPM methods read whole-tile features from the training cache (same window and dtype as
    selection, as the demo's scoring does), so the score measures the model, not a change of
    feature path."""
    from ..inference.evaluate import score_checkpoint

    pairs = run.test_pairs()
    preds, results = {}, {}
    for key, c in run.configs.items():
        cm, preds[key], sc = score_checkpoint(Path(outs[key]) / "best", pairs, c.features, c.train.eval_window, device)
        results[key] = (cm, sc)
    return preds, results, pairs
