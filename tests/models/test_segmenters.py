"""The three segmenters (HRNet-only, Diff-HRNet, DDPM pixel classifier) and their safetensors checkpoints."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from diffhrnet_lab.config import embedded_ddpm_dir
from diffhrnet_lab.ddpm.unet import build_scheduler, build_unet, load_bundle
from diffhrnet_lab.errors import ConfigError, DataError
from diffhrnet_lab.features.extractor import FeatureExtractor
from diffhrnet_lab.models.segmenters import DDPMPixelClassifier, DiffHRNet, load_segmenter


@pytest.fixture(scope="module")
def fx():
    torch.manual_seed(0)
    return FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50, 250), (0, 1))


def test_checkpoint_of_another_variant_or_class_count_names_both(trained, tmp_path):
    with pytest.raises(DataError, match=r"checkpoint is diffhrnet w18_small with 7 classes, but num_classes=6"):
        load_segmenter(trained, expect={"num_classes": 6})
    with pytest.raises(DataError, match=r"checkpoint has 'w18_small'"):
        load_segmenter(trained, expect={"variant": "w48"})
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["model"]["variant"], meta["num_classes"] = "w18", 6
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"weights do not fit diffhrnet w18 with 6 classes .* in the file, .* in the model"):
        load_segmenter(bad)


def test_changed_ddpm_weights_are_detected(trained, tmp_path):
    other = tmp_path / "ddpm"
    shutil.copytree(embedded_ddpm_dir(), other)
    b = load_bundle(other)
    from diffhrnet_lab.ddpm.unet import save_bundle

    with torch.no_grad():
        next(b.unet.parameters()).add_(1.0)
    save_bundle(other, b.unet, b.scheduler, b.stats, b.meta)
    with pytest.raises(DataError, match="DDPM weights differ"):
        load_segmenter(trained, ddpm_path=other)


class _Booby:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_pickles_are_refused_without_being_unpickled(tmp_path, samples_dir):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Booby(str(marker))}))
    r = subprocess.run([sys.executable, "-m", "diffhrnet_lab.cli", "evaluate", "--checkpoint", str(evil), "--data",
                        str(samples_dir), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "refused without being opened" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(DataError, match="refused"):
        load_segmenter(evil)
    # a pickle under the expected names is still never unpickled
    fake = tmp_path / "fake"
    (fake / "unet").mkdir(parents=True)
    (fake / "model.json").write_text("{}")
    (fake / "model.safetensors").write_bytes(evil.read_bytes())
    (fake / "ddpm.json").write_text("{}")
    (fake / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(evil.read_bytes())
    with pytest.raises(DataError, match="corrupt"):
        load_segmenter(fake)
    with pytest.raises(DataError):
        load_bundle(fake)
    assert not marker.exists()


@pytest.mark.parametrize("model_cls", ["multistage", "late", "mlp"])
def test_model_given_its_own_features_equals_model_computing_them(fx, model_cls):
    torch.manual_seed(2)
    m = (DDPMPixelClassifier(5, fx) if model_cls == "mlp" else DiffHRNet(5, 4, "w18_small", fx, model_cls, "concat")).eval()
    x = torch.randn(2, 4, 64, 96)
    with torch.no_grad():
        feats = fx.compute(x)
        a, b = m(x), m(x, [feats[k] for k in fx.keys])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


FAST_COMBOS = {("none", "add"), ("late", "concat"), ("2 4", "gated")}  # every stage setting runs in the slow set


@pytest.mark.parametrize("stages,fusion", [
    (s, f) if (s, f) in FAST_COMBOS else pytest.param(s, f, marks=pytest.mark.slow)
    for s in ("none", "late", "multistage", "2 4") for f in ("concat", "add", "gated")])
def test_output_shape_for_every_stage_setting_and_operator(fx, stages, fusion):
    m = DiffHRNet(7, 4, "w18_small", fx, stages, fusion)
    y = m(torch.randn(2, 4, 45, 70))
    assert y.shape == (2, 7, 45, 70)
    expected = {"none": 0, "late": 4, "multistage": 1 + 2 + 3 + 4, "2 4": 2 + 4}[stages]
    assert len(m.points) == expected


@pytest.mark.parametrize("op", [pytest.param("add", marks=pytest.mark.slow), "gated"])
def test_add_and_gated_start_as_the_hrnet_only_model_with_the_same_weights(fx, op):
    """Zero-initialised fusion: before training, Diff-HRNet's logits are those of an HRNet-only model
    holding the same backbone and head weights (odd input size: padding and cropping included)."""
    torch.manual_seed(1)
    plain = DiffHRNet(5, 4, "w18_small").eval()
    fused = DiffHRNet(5, 4, "w18_small", fx, "multistage", op).eval()
    missing, unexpected = fused.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("points.", "ddpm.")) for k in missing)
    x = torch.randn(1, 4, 45, 70)
    with torch.no_grad():
        a, b = plain(x), fused(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    concat = DiffHRNet(5, 4, "w18_small", fx, "multistage", "concat").eval()
    concat.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        assert (concat(x) - a).abs().max() > 1e-2  # concat does change the output: the comparison can fail


def test_logits_of_an_odd_sized_input_are_the_top_left_of_its_padded_input_logits():
    """Inputs are reflect-padded at the bottom/right to a multiple of 32 and the logits cropped back."""
    from diffhrnet_lab.data.tiling import pad_to

    torch.manual_seed(3)
    m = DiffHRNet(3, 4, "w18_small").eval()
    x = torch.randn(1, 4, 45, 70)
    xp, h, w = pad_to(x, 32)
    assert xp.shape[-2:] == (64, 96) and (h, w) == (45, 70)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(xp)[..., :45, :70], atol=1e-5, rtol=0)


def test_frozen_ddpm_gets_no_gradient_and_is_not_checkpointed(fx):
    m = DiffHRNet(3, 4, "w18_small", fx, "late", "concat")
    m(torch.randn(2, 4, 32, 32)).sum().backward()
    assert all(p.grad is None for p in m.ddpm.parameters())
    assert any(p.grad is not None for p in m.points.parameters())
    assert not any(k.startswith("ddpm.") for k in m.trainable_state_dict())


def test_finetuned_ddpm_gets_gradients_and_is_checkpointed():
    torch.manual_seed(0)
    fx = FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50,), (0,))
    # concat: add/gated start with zero adapter scales, so the DDPM's gradient is zero at step 0
    m = DiffHRNet(3, 4, "w18_small", fx, "late", "concat", finetune_ddpm=True)
    m(torch.randn(2, 4, 32, 32)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.ddpm.parameters())
    assert any(k.startswith("ddpm.") for k in m.trainable_state_dict())


def test_ddpm_pixel_classifier_is_the_same_mlp_applied_to_every_pixel(fx):
    """Features given at the input's resolution are not resized: each pixel's logits are the MLP
    (Linear → ReLU → BN → Linear → ReLU → BN → Linear) of that pixel's concatenated features."""
    torch.manual_seed(4)
    m = DDPMPixelClassifier(6, fx).eval()
    for bn in (m.mlp[2], m.mlp[5]):  # non-trivial running statistics, so eval-mode BN is exercised
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 4, 5, 7)
    streams = [torch.randn(1, fx.channels()[k], 5, 7) for k in fx.keys]
    with torch.no_grad():
        out = m(x, streams)
    assert out.shape == (1, 6, 5, 7)

    def lin(conv, v):
        return v @ conv.weight[:, :, 0, 0].T + conv.bias

    def bn(b, v):
        return (v - b.running_mean) / torch.sqrt(b.running_var + b.eps) * b.weight + b.bias

    for i, j in ((0, 0), (2, 3), (4, 6)):
        v = torch.cat([s[0, :, i, j] for s in streams])
        with torch.no_grad():
            h = bn(m.mlp[2], lin(m.mlp[0], v).relu())
            h = bn(m.mlp[5], lin(m.mlp[3], h).relu())
            torch.testing.assert_close(out[0, :, i, j], lin(m.mlp[6], h), atol=1e-5, rtol=1e-5)


def test_logit_fusion_adds_the_features_only_head_which_is_the_pixel_mlp_on_standardised_streams(fx):
    """With HRNet's classifier zeroed, a Diff-HRNet with logit fusion outputs exactly its features-only
    head: DDPM-Seg's MLP on the standardised, upsampled streams.  The aux logits are kept for the loss
    only while training."""
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="none", feature_norm=True, aux_weight=0.4, logit_fusion=True).eval()
    with torch.no_grad():
        m.head.classify.weight.zero_()
        m.head.classify.bias.zero_()
    x = torch.randn(1, 4, 64, 64)
    feats = fx.compute(x)
    streams = m.norm([feats[k] for k in fx.keys])
    up = torch.cat([torch.nn.functional.interpolate(f, size=(64, 64), mode="bilinear", align_corners=False)
                    for f in streams], 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.aux(up))
    assert m.aux_logits is None
    m.train()
    out = m(x)
    assert m.aux_logits is not None and m.aux_logits.shape == out.shape


def test_logit_fusion_without_a_features_only_head_is_refused(fx):
    from diffhrnet_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="needs model.aux_weight > 0"):
        DiffHRNet(5, 4, "w18_small", fx, stages="none", logit_fusion=True)


def test_head_fusion_lets_the_features_reach_the_output_without_any_fusion_stage(fx):
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="none", head_fusion=8).eval()
    assert m.head.mix[0].in_channels == sum(m.backbone.out_channels) + 8 * len(fx.keys)
    x = torch.randn(1, 4, 64, 64)
    streams = [fx.compute(x)[k] for k in fx.keys]
    with torch.no_grad():
        a = m(x, streams)
        b = m(x, [s + 1.0 for s in streams])
    assert (a - b).abs().max() > 1e-3  # the streams change the prediction
    plain = DiffHRNet(5, 4, "w18_small", fx, stages="none")
    assert not plain.uses_streams and not any(k.startswith("ddpm.") for k in plain.state_dict())


def test_residual_model_starts_as_the_pixel_classifier_and_hrnet_learns_only_a_correction(fx):
    """``model.residual``: logits = pixel classifier(standardised streams) + HRNet's, HRNet's last
    convolution zero at step 0 (so only that layer gets a gradient at first); no aux loss needed."""
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True).eval()
    x = torch.randn(1, 4, 64, 64)
    streams = m.norm([fx.compute(x)[k] for k in fx.keys])
    up = torch.cat([torch.nn.functional.interpolate(f, size=(64, 64), mode="bilinear", align_corners=False)
                    for f in streams], 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.aux(up))
    m.train()
    m(x).logsumexp(1).mean().backward()
    assert m.head.classify.weight.grad.abs().sum() > 0 and m.aux[0].weight.grad.abs().sum() > 0
    assert m.backbone.stem.conv1.weight.grad is None or m.backbone.stem.conv1.weight.grad.abs().sum() == 0
    assert m.aux_logits is None  # aux_weight 0: nothing for a separate loss


def test_correction_scale_averages_the_fused_model_and_its_base_when_scoring_only(fx):
    """``model.correction_scale=0.5`` (round 9): scoring logits = base + 0.5 · HRNet's correction,
    i.e. the mean of the full model's and the base's; training keeps the whole correction."""
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True, correction_scale=0.5)
    torch.nn.init.normal_(m.head.classify.weight, std=0.5)  # a trained correction, not the zero start
    m.eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        half = m(x)
        m.correction_scale = 1.0
        full = m(x)
        m.head.classify.weight.zero_(), m.head.classify.bias.zero_()
        base = m(x)
    assert (full - base).abs().max() > 0.1
    torch.testing.assert_close(half, (full + base) / 2, rtol=1e-5, atol=1e-5)


def test_base_and_hrnet_read_only_the_decoder_blocks_each_is_given():
    """``model.base_blocks`` / ``model.fusion_blocks`` (round 23): with blocks 0, 1, 2 extracted, a
    base on 0 and 1 and HRNet on 1 and 2, a change in block 0's features moves the base and leaves
    HRNet's correction (the logits minus the base's) as it was; a change in block 2's moves the
    correction and leaves the base as it was."""
    torch.manual_seed(0)
    fx3 = FeatureExtractor(build_unet("tiny", 4, 64), build_scheduler(), (50,), (0, 1, 2))
    m = DiffHRNet(5, 4, "w18_small", fx3, stages="multistage", feature_norm=True, residual=True,
                  base_blocks="0,1", fusion_blocks="1 2")
    chans = fx3.channels()
    assert m.aux[0].in_channels == sum(chans[k] for k in fx3.keys if k[1] in (0, 1))
    assert m.base_streams == [0, 1] and m.fusion_streams == [1, 2]
    torch.nn.init.normal_(m.head.classify.weight, std=1e-3)  # a trained correction, not the zero start
    for p in m.points.parameters():  # open fusion points, not the identity start
        torch.nn.init.normal_(p, std=0.02)
    m.eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        streams = [fx3.compute(x)[k] for k in fx3.keys]
        moved = [s + (10 * torch.randn_like(s) if k[1] == n else 0) for n in (0, 2) for s, k in zip(streams, fx3.keys)]
        runs = {}
        for name, s in (("same", streams), ("block0", moved[:3]), ("block2", moved[3:])):
            logits = m(x, s)
            base = m.aux.classify_streams([m.norm(s)[i] for i in (0, 1)], x.shape[-2:], x.dtype)
            runs[name] = (base, logits - base)
    (b, c), (b0, c0), (b2, c2) = runs["same"], runs["block0"], runs["block2"]
    assert (b0 - b).abs().max() > 0.5 and (c2 - c).abs().max() > 0.01  # both parts do read these streams
    torch.testing.assert_close(b2, b)
    torch.testing.assert_close(c0, c, rtol=1e-6, atol=1e-4)  # float32 rounding of logits up to ~80


def test_blocks_a_model_part_reads_must_be_extracted(fx):
    with pytest.raises(ConfigError, match=r"model.base_blocks names block\(s\) \[2\], but the features hold blocks \[0, 1\]"):
        DiffHRNet(5, 4, "w18_small", fx, residual=True, base_blocks="1,2")
    with pytest.raises(ConfigError, match="model.fusion_blocks 'one'"):
        DiffHRNet(5, 4, "w18_small", fx, residual=True, fusion_blocks="one")
    with pytest.raises(ConfigError, match="needs model.residual=true"):
        DiffHRNet(5, 4, "w18_small", fx, base_blocks="0")


def test_correction_scale_does_not_change_training(fx):
    torch.manual_seed(0)
    a = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True, correction_scale=0.5)
    b = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True)
    b.load_state_dict(a.state_dict())
    torch.nn.init.normal_(a.head.classify.weight, std=0.5)
    b.head.classify.weight.data.copy_(a.head.classify.weight)
    x = torch.randn(2, 4, 64, 64)
    a.train(), b.train()
    a.head.drop.p = b.head.drop.p = 0.0
    torch.testing.assert_close(a(x), b(x))


def test_correction_scale_leaves_a_model_without_a_base_alone(fx):
    """The default (0.5) applies to the residual model; a fused model without the pixel-classifier
    base has nothing to shrink towards and keeps its logits."""
    torch.manual_seed(0)
    a = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", correction_scale=0.5).eval()
    b = DiffHRNet(5, 4, "w18_small", fx, stages="multistage").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ConfigError, match="correction_scale must be >= 0"):
        DiffHRNet(5, 4, "w18_small", fx, stages="multistage", residual=True, correction_scale=-1.0)


def test_correction_dropout_leaves_the_correction_out_per_training_sample_only(fx):
    """``model.correction_dropout`` (round 11): a dropped sample's logits are the base's alone and
    HRNet gets no gradient from it; a kept sample's are the whole sum; scoring is untouched."""
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True,
                  correction_scale=1.0, correction_dropout=0.5)
    torch.nn.init.normal_(m.head.classify.weight, std=0.5)
    m.head.drop.p = 0.0
    x = torch.randn(8, 4, 64, 64)
    ref = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True, correction_scale=1.0)
    ref.load_state_dict(m.state_dict())
    ref.head.drop.p = 0.0
    m.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))  # scoring: no dropout
    m.train()
    torch.manual_seed(3)
    out = m(x)
    torch.manual_seed(3)
    kept = torch.rand(8) >= 0.5
    assert 0 < kept.sum() < 8
    # BatchNorm in train mode normalises with this batch's statistics: compare with the model in
    # train mode too, whose base (the pixel classifier's BatchNorm) then matches
    ref.load_state_dict(m.state_dict())
    ref.train()
    with torch.no_grad():
        full_t = ref(x)
        ref.head.classify.weight.zero_(), ref.head.classify.bias.zero_()
        base_t = ref(x)
    torch.testing.assert_close(out[kept].detach(), full_t[kept], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[~kept].detach(), base_t[~kept], rtol=1e-4, atol=1e-4)
    out[~kept].sum().backward()
    assert m.head.classify.weight.grad.abs().sum() == 0 and m.aux[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="correction_dropout"):
        DiffHRNet(5, 4, "w18_small", fx, stages="multistage", correction_dropout=0.5)


def test_rgb_lr_scales_only_hrnet_own_layers(fx):
    m = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True)
    groups = m.param_groups(0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    slow = {names[id(p)].split(".")[0] for p in groups[0]["params"]}
    fast = {names[id(p)].split(".")[0] for p in groups[1]["params"]}
    assert groups[0]["lr_scale"] == 0.1 and slow == {"backbone", "head"}
    assert groups[1]["lr_scale"] == 1.0 and fast == {"points", "aux"}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in m.parameters())
    assert len(m.param_groups(1.0)) == 1


def test_train_step_applies_each_groups_learning_rate_factor():
    from accelerate import Accelerator

    from diffhrnet_lab.training.finetune import train_step

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))

    class Lin(torch.nn.Module):
        def forward(self, x, streams=None):
            return (a + b).reshape(1, 3, 1, 1).expand(1, 3, 1, 2)

    opt = torch.optim.SGD([{"params": [a], "lr_scale": 0.1}, {"params": [b], "lr_scale": 1.0}], lr=1.0)
    train_step(Lin(), {"image": torch.zeros(1, 1, 1, 2), "mask": torch.tensor([[[0, 0]]])}, opt,
               Accelerator(cpu=True), 0.5, None, 255)
    torch.testing.assert_close(a.detach(), 0.1 * b.detach())  # same gradient, a tenth of the step
    assert b[0] > 0 and [g["lr"] for g in opt.param_groups] == [0.05, 0.5]


def test_detached_base_learns_only_from_its_own_loss(fx):
    """``model.detach_base``: the fused loss moves HRNet, not the pixel-classifier base; the base's
    own loss (aux_weight) moves the base, not HRNet."""
    from diffhrnet_lab.errors import ConfigError

    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="none", feature_norm=True, residual=True, aux_weight=1.0,
                  detach_base=True).train()
    x = torch.randn(1, 4, 64, 64)
    m(x).logsumexp(1).mean().backward(retain_graph=True)
    assert m.aux[0].weight.grad is None and m.head.classify.weight.grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)
    m.aux_logits.logsumexp(1).mean().backward()
    assert m.aux[0].weight.grad.abs().sum() > 0 and m.head.classify.weight.grad is None
    with pytest.raises(ConfigError, match="needs model.residual=true and model.aux_weight > 0"):
        DiffHRNet(5, 4, "w18_small", fx, stages="none", residual=True, detach_base=True)


def test_a_checkpoint_that_predates_a_model_field_loads_as_the_model_it_was(trained, tmp_path):
    """Checkpoints written before ``model.residual`` existed are plain fused models, whatever the
    default is now; the same weights claimed as a residual model are refused (the base is missing)."""
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    meta = json.loads((old / "model.json").read_text())
    assert meta["model"]["residual"] is True  # the fixture is trained with today's default
    del meta["model"]["residual"]
    (old / "model.json").write_text(json.dumps(meta))
    state = {k: v for k, v in load_file(str(old / "model.safetensors")).items() if not k.startswith("aux.")}
    save_file(state, str(old / "model.safetensors"))
    model, _ = load_segmenter(old)
    assert model.aux is None and not model.logit_fusion
    meta["model"]["residual"] = True
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"missing \['aux\."):
        load_segmenter(old)


def test_rgb_dropout_hides_the_image_from_hrnet_but_not_from_the_ddpm(fx):
    """``model.rgb_dropout``: at 1, HRNet never sees the image (training or scoring), so with the DDPM
    streams fixed the logits do not depend on it; at 0.5, a seeded half of the training samples
    reach HRNet as zeros, and scoring sees every image."""
    from diffhrnet_lab.errors import ConfigError

    torch.manual_seed(0)
    x1, x2 = torch.randn(2, 4, 64, 64), torch.randn(2, 4, 64, 64)
    m = DiffHRNet(5, 4, "w18_small", fx, feature_norm=True, residual=True, rgb_dropout=1.0).eval()
    torch.nn.init.normal_(m.head.classify.weight)  # a trained-looking correction, not the zero start
    with torch.no_grad():
        streams = m.ddpm_streams(x1)
        torch.testing.assert_close(m(x1, streams), m(x2, streams))
        full = DiffHRNet(5, 4, "w18_small", fx, feature_norm=True, residual=True).eval()
        full.load_state_dict(m.state_dict())
        assert not torch.allclose(full(x1, streams), full(x2, streams))  # the image matters without dropout
    half = DiffHRNet(5, 4, "w18_small", fx, feature_norm=True, residual=True, rgb_dropout=0.5).train()
    x = torch.ones(64, 1, 2, 2)
    torch.manual_seed(3)
    kept = half.image_input(x)
    torch.manual_seed(3)
    expect = (torch.rand(64, 1, 1, 1) >= 0.5).float().expand(64, 1, 2, 2)
    torch.testing.assert_close(kept, expect)
    assert 16 < kept[:, 0, 0, 0].sum() < 48  # some of each
    assert torch.equal(half.eval().image_input(x), x)
    with pytest.raises(ConfigError, match="without features .* it would see nothing"):
        DiffHRNet(5, 4, "w18_small", None, rgb_dropout=1.0)
    with pytest.raises(ConfigError, match="is a probability, got 1.5"):
        DiffHRNet(5, 4, "w18_small", fx, rgb_dropout=1.5)


@pytest.mark.parametrize("rgb_dropout", [0.0, 1.0])
def test_every_fused_layer_learns_from_the_first_steps(fx, rgb_dropout):
    """Zero starts (residual classifier, identity fusion adapters) must not leave a dead network: by the
    third step every fusion adapter, gate and the classifier has a gradient.  Without the image
    (``rgb_dropout=1``) the adapters cannot start at zero, or every HRNet activation stays zero."""
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, feature_norm=True, residual=True, rgb_dropout=rgb_dropout).train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(2, 4, 32, 32), torch.randint(0, 5, (2, 32, 32))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and n.startswith(("points.", "head.classify.weight"))
            and (p.grad is None or not p.grad.abs().sum() > 0) and "stream_logits" not in n]
    assert dead == []


def test_window_standardised_input_has_zero_mean_unit_spread_per_band_and_floors_flat_bands():
    from diffhrnet_lab.models.segmenters import MIN_WINDOW_STD, window_standardised

    nearly_flat = torch.tensor([[0.7, 0.702], [0.7, 0.702]])  # spread 0.00115, far below the floor
    x = torch.stack([torch.tensor([[1.0, 3.0], [1.0, 3.0]]), nearly_flat])[None]
    out = window_standardised(x)
    std = torch.tensor([1.0, 3.0, 1.0, 3.0]).std()  # the sample std of band 1's four pixels
    torch.testing.assert_close(out[0, 0], torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) / std)
    # divided by the floor, not by its own spread (which would give ±0.87)
    torch.testing.assert_close(out[0, 1], torch.tensor([[-0.001, 0.001], [-0.001, 0.001]]) / MIN_WINDOW_STD)


def test_window_normalised_hrnet_does_not_see_a_colour_cast_and_the_dataset_one_does():
    """A per-band gain and offset (another scene's illumination) changes nothing HRNet sees with
    ``rgb_norm="window"``; with the dataset's statistics it changes the logits."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    cast = x * torch.tensor([1.3, 0.8, 1.1]).view(1, 3, 1, 1) + torch.tensor([0.2, -0.3, 0.1]).view(1, 3, 1, 1)
    for norm, same in (("window", True), ("dataset", False)):
        torch.manual_seed(1)
        m = DiffHRNet(5, 3, rgb_norm=norm).eval()
        with torch.no_grad():
            a, b = m(x), m(cast)
        if same:
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # float rounding only
        else:
            assert (a - b).abs().max() > 1e-2


def test_unknown_rgb_norm_lists_the_choices():
    with pytest.raises(ConfigError, match="model.rgb_norm 'tile': choose one of dataset, window"):
        DiffHRNet(5, 3, rgb_norm="tile")


def test_propagation_is_a_per_pixel_convex_mix_of_neighbours_at_each_dilation():
    """``fusion.propagate`` on a known case: weights all on one neighbour move the logits by the
    dilation (edge pixels repeated), uniform weights average the 3x3 neighbourhood, and a constant
    map stays constant whatever the weights (a convex mix creates no class evidence)."""
    from diffhrnet_lab.models.fusion import NEIGHBOURS, propagate

    x = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(1, 2, 6, 7)
    right = torch.full((1, 9, 6, 7), -1e4)
    right[:, NEIGHBOURS.index((0, 1))] = 0.0  # every pixel takes its right-hand neighbour at distance d
    moved = propagate(x, right, dilations=(2,))
    assert torch.equal(moved[..., :5], x[..., 2:]) and torch.equal(moved[..., 5:], x[..., 6:].expand(-1, -1, -1, 2))
    uniform = propagate(x, torch.zeros(1, 9, 6, 7), dilations=(1,))
    assert torch.allclose(uniform[..., 1:-1, 1:-1], torch.nn.functional.avg_pool2d(x, 3, 1), atol=1e-4)
    flat = torch.full((1, 2, 6, 7), 3.0)
    assert torch.allclose(propagate(flat, torch.randn(1, 36, 6, 7)), flat)
    with pytest.raises(ConfigError, match="needs 36 affinity channels, got 9"):
        propagate(x, torch.zeros(1, 9, 6, 7))


def test_propagating_model_starts_near_its_base_and_hrnet_learns_where_not_what(fx):
    """``model.correction=propagate`` (round 15): the output is the pixel-classifier base's logits
    propagated with HRNet's per-pixel weights.  At step 0 (zero weights, centre bias) each round keeps
    87 % of the pixel, so the output is close to the base; HRNet's layers get gradients; it cannot
    change a base that is the same everywhere."""
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True,
                  correction="propagate").eval()
    x = torch.randn(1, 4, 64, 64)
    streams = m.norm([fx.compute(x)[k] for k in fx.keys])
    up = torch.cat([torch.nn.functional.interpolate(f, size=(64, 64), mode="bilinear", align_corners=False)
                    for f in streams], 1)
    with torch.no_grad():
        out, base = m(x), m.aux(up)
    assert m.head.classify.out_channels == 36
    rel = (out - base).norm() / base.norm()
    assert 0 < rel < 0.2
    torch.manual_seed(0)
    m = DiffHRNet(5, 4, "w18_small", fx, stages="multistage", feature_norm=True, residual=True,
                  correction="propagate").train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    y = torch.randint(0, 5, (1, 64, 64))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert m.backbone.stem.conv1.weight.grad.abs().sum() > 0 and m.aux[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="needs model.residual=true"):
        DiffHRNet(5, 4, "w18_small", fx, correction="propagate")
    with pytest.raises(ConfigError, match="set model.correction_scale=1"):
        DiffHRNet(5, 4, "w18_small", fx, residual=True, correction="propagate", correction_scale=0.5)
    with pytest.raises(ConfigError, match="choose one of logits, propagate"):
        DiffHRNet(5, 4, "w18_small", fx, residual=True, correction="blur")


def test_a_frozen_base_is_the_finished_pixel_classifier_and_training_leaves_it_so(tmp_path):
    """``model.base_init`` (round 25): the residual model's base is a finished ``ddpm_mlp`` run's
    classifier. At step 0 the fused model's logits are that classifier's; after fine-tuning its
    weights and BatchNorm statistics are still the classifier's, and HRNet has learned a correction."""
    from diffhrnet_lab.config import profile_config, replace
    from diffhrnet_lab.models.segmenters import build_segmenter
    from diffhrnet_lab.training.finetune import finetune

    cfg = profile_config("smoke")
    cfg.data = replace(cfg.data, batch_size=4, crop_size=64)
    cfg.train = replace(cfg.train, steps=3, eval_every=3, checkpoint_every=3, warmup_steps=1)
    cfg.model = replace(cfg.model, method="ddpm_mlp")
    finetune(cfg, tmp_path / "mlp", progress=False)
    mlp, meta = load_segmenter(tmp_path / "mlp" / "last")
    cfg.model = replace(cfg.model, method="diffhrnet", residual=True, feature_norm=True,
                        base_init=str(tmp_path / "mlp"))
    net = build_segmenter(cfg.model, cfg.features, meta["num_classes"], meta["bands"], load_bundle(embedded_ddpm_dir()))
    x = torch.randn(2, meta["bands"], 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), mlp(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in net.aux.parameters()) and not net.train().aux.training

    finetune(cfg, tmp_path / "fused", progress=False)
    fused, fused_meta = load_segmenter(tmp_path / "fused" / "last")
    assert fused_meta["model"]["base_init"] == str(tmp_path / "mlp")
    base, classifier = fused.aux.state_dict(), mlp.mlp.state_dict()
    assert base.keys() == classifier.keys() and all(torch.equal(base[k], classifier[k]) for k in base)
    assert fused.head.classify.weight.abs().sum() > 0  # HRNet's correction moved off its zero start


def test_a_frozen_base_must_be_a_finished_pixel_classifier_of_the_same_features(trained, tmp_path):
    from diffhrnet_lab.config import FeatureConfig, ModelConfig
    from diffhrnet_lab.models.segmenters import build_segmenter

    bundle = load_bundle(embedded_ddpm_dir())
    meta = json.loads((trained / "model.json").read_text())
    features = FeatureConfig(timesteps=tuple(meta["features"]["timesteps"]), blocks=tuple(meta["features"]["blocks"]))
    model = ModelConfig(method="diffhrnet", residual=True, base_init=str(trained))
    with pytest.raises(DataError, match=r"cannot be this model's base: its method is 'diffhrnet'"):
        build_segmenter(model, features, meta["num_classes"], meta["bands"], bundle)
    with pytest.raises(DataError, match=r"no finished checkpoint there .* train the ddpm_mlp run first"):
        build_segmenter(ModelConfig(method="diffhrnet", base_init=str(tmp_path)), features, 7, meta["bands"], bundle)
    with pytest.raises(ConfigError, match="needs model.residual=true"):
        build_segmenter(ModelConfig(method="diffhrnet", residual=False, base_init=str(trained)), features, 7,
                        meta["bands"], bundle)
