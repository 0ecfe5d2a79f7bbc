"""Self-training (``train.teacher``): masks in memory, a teacher's confident classes as labels, the
student's data and its resume, and the label-efficiency methods that use it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.data.datasets import LabelledTiles, find_pairs, label_budget
from diffhrnet_lab.data.io import read_mask
from diffhrnet_lab.data.labels import SAMPLES
from diffhrnet_lab.errors import ConfigError, DataError


def test_labelled_tiles_take_masks_in_memory_and_read_no_label_of_an_unlabelled_pair(make_labelled):
    pairs = find_pairs(make_labelled(n=3))
    given = np.full((40, 48), 3, dtype=np.uint8)
    ds = LabelledTiles(pairs, "samples", masks=[given, None, None])
    assert np.array_equal(ds.masks[0], given)  # the given mask, not the file's
    assert np.array_equal(ds.masks[1], read_mask(pairs[1].mask, SAMPLES))
    assert not np.array_equal(ds.masks[0], read_mask(pairs[0].mask, SAMPLES))
    no_mask = [dataclasses.replace(p, mask=None) for p in pairs]
    ds = LabelledTiles(no_mask, "samples", unlabelled=True)
    assert all((m == SAMPLES.ignore_index).all() for m in ds.masks)
    with pytest.raises(DataError, match="t0.tif: no mask"):
        LabelledTiles(no_mask, "samples")
    with pytest.raises(DataError, match="2 mask"):
        LabelledTiles(pairs, "samples", masks=[given, given])
    with pytest.raises(DataError, match="but its mask"):
        LabelledTiles(pairs, "samples", masks=[given[:20], None, None])


def _sample_pairs():
    from diffhrnet_lab.data.layouts import train_val_pairs

    return train_val_pairs(profile_config("smoke").data)


def test_pseudo_labels_are_the_teachers_classes_where_it_is_sure(trained):
    from diffhrnet_lab.inference.evaluate import score_checkpoint
    from diffhrnet_lab.training.pseudo import pseudo_labels, unlabelled_pairs

    _, train, _ = _sample_pairs()
    labelled = label_budget(train, 1, seed=0)
    unl = unlabelled_pairs(train, labelled)[:2]
    assert unl and all(p.mask is None for p in unl) and not {p.group for p in unl} & {p.group for p in labelled}
    all_kept, frac0 = pseudo_labels(trained, unl, None, 0.0, "samples")
    by_id = {t.id: t for t in train}
    _, preds, _ = score_checkpoint(trained, [by_id[p.id] for p in unl])  # the same tiles, scored with labels
    assert frac0 == 1.0 and all(np.array_equal(a, b) for a, b in zip(all_kept, preds))  # threshold 0: the argmax
    half, frac = pseudo_labels(trained, unl, None, 0.2, "samples")  # 7 classes: chance is 1/7
    higher, frac_hi = pseudo_labels(trained, unl, None, 0.25, "samples")
    for a, h, g in zip(all_kept, half, higher):
        sure = h != SAMPLES.ignore_index
        assert np.array_equal(h[sure], a[sure])  # a kept pixel keeps the teacher's class
        assert not ((g != SAMPLES.ignore_index) & ~sure).any()  # a higher cut keeps a subset
    assert frac == np.mean(np.concatenate([(h != 255).ravel() for h in half]))
    assert 0.0 < frac_hi < frac < 1.0, (frac_hi, frac)  # the 4-step teacher is unsure of some pixels
    # class-balanced (CBST): of the pixels each class was predicted on, its surest half
    balanced, frac_b = pseudo_labels(trained, unl, None, 0.0, "samples", class_fraction=0.5)
    every = np.concatenate([a.ravel() for a in all_kept])
    kept_b = np.concatenate([b.ravel() for b in balanced])
    for c in np.unique(every):
        n = int((every == c).sum())
        assert n // 2 <= int((kept_b == c).sum()) <= n // 2 + 1, (c, n, int((kept_b == c).sum()))
    assert np.array_equal(kept_b[kept_b != 255], every[kept_b != 255]) and 0.49 < frac_b < 0.52
    both, _ = pseudo_labels(trained, unl, None, 0.2, "samples", class_fraction=0.5)
    assert all(not ((x != 255) & (h == 255)).any() for x, h in zip(both, half))  # and the global cut too
    whole, _ = pseudo_labels(trained, unl, None, 0.0, "samples", class_fraction=1.0)
    assert all(np.array_equal(w, a) for w, a in zip(whole, all_kept))
    with pytest.raises(DataError, match="drop their mask paths"):
        pseudo_labels(trained, train[:1], None, 0.5, "samples")
    with pytest.raises(ConfigError, match="label scheme 'samples', this run uses 'dubai'"):
        pseudo_labels(trained, unl, None, 0.5, "dubai")
    with pytest.raises(DataError, match="no finished checkpoint"):
        pseudo_labels(trained.parent / "nowhere", unl, None, 0.5, "samples")


def _student_cfg(teacher, threshold=0.2, steps=4):
    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, batch_size=4, crop_size=64, label_budget=1, seed=0)
    cfg.train = replace(cfg.train, steps=steps, eval_every=steps, checkpoint_every=2, lr=3e-3, warmup_steps=1,
                        teacher=str(teacher), pseudo_threshold=threshold)
    cfg.model = replace(cfg.model, method="hrnet")
    return cfg


@pytest.mark.slow
def test_a_student_trains_on_the_labelled_scene_and_the_teachers_labels_and_resumes_on_the_same(trained, tmp_path):
    from diffhrnet_lab.fileio import load_tensors
    from diffhrnet_lab.training.finetune import finetune
    from diffhrnet_lab.training.pseudo import pseudo_labels, unlabelled_pairs

    a = finetune(_student_cfg(trained), tmp_path / "a", progress=False)
    _, train, val = _sample_pairs()
    labelled = label_budget(train, 1, seed=0)
    unl = unlabelled_pairs(train, labelled)
    assert a["train_groups"] == sorted({p.group for p in labelled})
    assert a["pseudo_groups"] == sorted({p.group for p in unl})
    assert not set(a["pseudo_groups"]) & (set(a["val_groups"]) | set(a["train_groups"]))
    want, frac = pseudo_labels(trained, unl, None, 0.2, "samples")
    assert 0.0 < frac < 1.0
    kept = load_tensors(tmp_path / "a" / "pseudo_labels.safetensors")
    assert all(np.array_equal(kept[f"mask_{i}"].numpy(), m) for i, m in enumerate(want))
    assert a["pseudo_kept"] == frac and a["teacher"] == str(trained)
    # interrupted after 2 steps and resumed: the same labels (read back), the same run
    finetune(_student_cfg(trained), tmp_path / "b", stop_after=2, progress=False)
    b = finetune(_student_cfg(trained), tmp_path / "b", resume="latest", progress=False)
    drop = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])
    from safetensors.torch import load_file

    wa, wb = (load_file(str(tmp_path / x / "last" / "model.safetensors")) for x in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="another teacher, threshold or tile list"):
        finetune(_student_cfg(trained, threshold=0.7), tmp_path / "b", resume="latest", progress=False)
    meta = json.loads((tmp_path / "a" / "last" / "model.json").read_text())
    assert meta["data"]["pseudo_groups"] == a["pseudo_groups"] and meta["data"]["pseudo_threshold"] == 0.2


def test_a_teacher_needs_scenes_left_unlabelled(trained, tmp_path):
    from diffhrnet_lab.training.finetune import finetune

    cfg = _student_cfg(trained)
    cfg.data = replace(cfg.data, label_budget=None)
    with pytest.raises(ConfigError, match="leaves no training scene unlabelled"):
        finetune(cfg, tmp_path, progress=False)


def test_a_batch_of_wholly_unsure_crops_counts_zero_loss_and_otherwise_the_mean():
    import torch.nn.functional as F

    from diffhrnet_lab.training.finetune import cross_entropy

    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, :2] = 255
    w = torch.tensor([0.5, 1.0, 2.0])
    for weights in (None, w):
        ref = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
        assert torch.allclose(cross_entropy(logits, target, weights, 255, empty_ok=True), ref, atol=1e-6)
        assert torch.equal(cross_entropy(logits, target, weights, 255), ref)  # PyTorch's own mean
    unsure = torch.full_like(target, 255)
    assert F.cross_entropy(logits, unsure, ignore_index=255).isnan()  # what PyTorch's mean gives
    loss = cross_entropy(logits, unsure, w, 255, empty_ok=True)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_self_trained_methods_come_after_their_teacher_and_read_its_run(tmp_path):
    from diffhrnet_lab.experiments.label_efficiency import run_config, run_dir
    from diffhrnet_lab.experiments.methods import TEACHERS, check_teachers

    check_teachers(["hrnet", "diffhrnet", "diffhrnet_st", "ddpm_mlp_st"])
    with pytest.raises(ConfigError, match="list 'diffhrnet' before it"):
        check_teachers(["diffhrnet_st", "diffhrnet"])
    cfg = profile_config("smoke")
    rc = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet_st", 1, 3, "Tile_2", tmp_path)
    assert rc.train.teacher == str(run_dir(tmp_path, "Tile_2", TEACHERS["diffhrnet_st"][0], 1, 3))
    assert rc.train.pseudo_threshold == 0.9 and rc.train.pseudo_class_fraction == 0.0
    cb = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet_cbst", 1, 3, "Tile_2", tmp_path)
    assert cb.train.pseudo_threshold == 0.0 and cb.train.pseudo_class_fraction == 0.2
    assert rc.model == run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet", 1, 3,
                                  "Tile_2", tmp_path).model  # the student is the default model
    assert run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet", 1, 3, "Tile_2",
                      tmp_path).train.teacher == ""


def test_a_method_on_a_frozen_base_reads_the_pixel_classifier_run_of_its_own_cell(tmp_path):
    """``methods.BASES`` (round 25): like a teacher, the base is the same (fold, budget, seed) run of
    its method, which must be listed first."""
    from diffhrnet_lab.config import profile_config
    from diffhrnet_lab.experiments.label_efficiency import run_config, run_dir
    from diffhrnet_lab.experiments.methods import check_teachers

    check_teachers(["hrnet", "ddpm_mlp", "diffhrnet_fb"])
    with pytest.raises(ConfigError, match="starts from the finished 'ddpm_mlp' run of the same cell"):
        check_teachers(["diffhrnet", "diffhrnet_fb", "ddpm_mlp"])
    cfg = profile_config("quick")
    rc = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet_fb", 2, 1, "Tile_3", tmp_path)
    assert rc.model.base_init == str(run_dir(tmp_path, "Tile_3", "ddpm_mlp", 2, 1))
    assert rc.model.method == "diffhrnet" and rc.model.residual
    plain = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet", 2, 1, "Tile_3", tmp_path)
    assert plain.model.base_init == "" and plain.data == rc.data


def test_a_finished_run_on_a_frozen_base_is_reused_only_with_that_base(tmp_path):
    """A finished ``diffhrnet_fb`` run is the model its cell's ``run_config`` asks for (its base
    included); the same run is refused as plain ``diffhrnet`` or with another cell's base."""
    from diffhrnet_lab.config import profile_config
    from diffhrnet_lab.experiments.label_efficiency import check_same_model, run_config, run_dir

    cfg = profile_config("quick")
    rc = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet_fb", 1, 0, "Tile_1", tmp_path)
    run = run_dir(tmp_path, "Tile_1", "diffhrnet_fb", 1, 0)
    (run / "last").mkdir(parents=True)
    (run / "last" / "model.json").write_text(json.dumps({"model": dataclasses.asdict(rc.model)}))
    check_same_model(run, rc.model, "diffhrnet_fb")
    other = run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet_fb", 1, 1, "Tile_1", tmp_path)
    for want in (other.model, run_config(cfg, tmp_path, tmp_path / "ddpm", tmp_path / "cache", "diffhrnet", 1, 0,
                                         "Tile_1", tmp_path).model):
        with pytest.raises(ConfigError, match=r"another model than method .*\(base_init"):
            check_same_model(run, want, "diffhrnet_fb")
