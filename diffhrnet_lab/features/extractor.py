"""Per-timestep DDPM decoder features: what Diff-HRNet fuses into HRNet.

DDPM-Seg (Baranchuk et al., ICLR 2022, §3) showed that the activations of a DDPM's denoising
U-Net decoder, taken on a noised input ``x_t = √ᾱ_t x₀ + √(1-ᾱ_t) ε`` (Ho et al. 2020, Eq. 4), are
strong pixel features; small t keep detail, larger t carry coarser semantics.  Their pipeline runs
one full U-Net forward per timestep and keeps every pixel's features in memory.  This extractor
computes the same numbers more cheaply:

* one fixed noise tensor ε, drawn from a seed and shared by all images (as DDPM-Seg does), so an
  image's features do not depend on which batch it was in;
* all timesteps of a batch in **one** forward pass of batch ``B x |T|``;
* the forward **stops after the deepest requested decoder block**: the remaining high-resolution
  blocks, usually the most expensive, never run;
* images stream through in batches; an optional on-disk cache (safetensors) keyed by checkpoint
  hash, T, B, noise seed and image id saves recomputation across epochs and runs.

Sizes: the U-Net needs multiples of its stride (8 for ``tiny``).  Other sizes are reflect-padded at
the bottom/right to the next multiple, and each feature map is cropped back to
``ceil(H / s_b) x ceil(W / s_b)`` (``s_b`` the block's stride), so feature pixel ``(i, j)`` still lies
over input pixel ``(i·s_b, j·s_b)`` and nothing of the padding is returned.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from ..data.tiling import pad_to
from ..ddpm.unet import DDPMBundle, bundle_weights, unet_stride
from ..errors import ConfigError
from ..fileio import atomic_save_tensors, load_tensors

FeatureKey = tuple[int, int]  # (timestep, decoder block)


def decoder_blocks(unet: UNet2DModel) -> list[dict]:
    """Channels and stride (relative to the input) of each decoder block's output."""
    n = len(unet.up_blocks)
    chans = list(reversed(unet.config.block_out_channels))
    return [{"block": i, "channels": chans[i], "stride": 2 ** max(0, n - 2 - i),
             "type": type(b).__name__} for i, b in enumerate(unet.up_blocks)]


class FeatureExtractor:
    """Decoder features of a frozen DDPM U-Net for timesteps ``T`` and decoder blocks ``B``.

    ``extractor(images)`` takes normalised images ``(N, C, H, W)`` in ``[-1, 1]`` and returns
    ``{(t, b): tensor (N, C_b, h_b, w_b)}`` (or ``(N, C_b, H, W)`` with ``upsample=True``).
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, timesteps: Sequence[int], blocks: Sequence[int],
                 noise_seed: int = 0, upsample: bool = False, cache_dir: str | os.PathLike | None = None,
                 checkpoint_id: str | None = None):
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        n_t = scheduler.config.num_train_timesteps
        bad_t = [t for t in timesteps if not 0 <= int(t) < n_t]
        if bad_t or not timesteps:
            raise ConfigError(f"timesteps {bad_t or list(timesteps)} invalid: choose one or more integers in [0, {n_t})")
        n_b = len(unet.up_blocks)
        bad_b = [b for b in blocks if not 0 <= int(b) < n_b]
        if bad_b or not blocks:
            info = ", ".join(f"{d['block']} ({d['type']}, {d['channels']} ch, 1/{d['stride']})" for d in decoder_blocks(unet))
            raise ConfigError(f"decoder block(s) {bad_b or list(blocks)} invalid; valid blocks: {info}")
        self.timesteps = tuple(int(t) for t in timesteps)
        self.blocks = tuple(sorted({int(b) for b in blocks}))
        self.noise_seed = noise_seed
        self.upsample = upsample
        self.stride = unet_stride(unet)
        self.info = {d["block"]: d for d in decoder_blocks(unet)}
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._checkpoint_id = checkpoint_id
        self._noise: dict[tuple[int, int, int], torch.Tensor] = {}

    @classmethod
    def from_bundle(cls, bundle: DDPMBundle, timesteps: Sequence[int], blocks: Sequence[int], **kw) -> "FeatureExtractor":
        ckpt = None
        if bundle.path is not None:
            ckpt = file_hash(bundle_weights(bundle.path))
        return cls(bundle.unet, bundle.scheduler, timesteps, blocks, checkpoint_id=ckpt, **kw)

    @property
    def keys(self) -> list[FeatureKey]:
        return [(t, b) for t in self.timesteps for b in self.blocks]

    def channels(self) -> dict[FeatureKey, int]:
        return {(t, b): self.info[b]["channels"] for t, b in self.keys}

    def feature_shape(self, h: int, w: int, block: int) -> tuple[int, int]:
        if self.upsample:
            return h, w
        s = self.info[block]["stride"]
        return math.ceil(h / s), math.ceil(w / s)

    # -- the shared noise -----------------------------------------------------------------------
    def noise(self, channels: int, h: int, w: int) -> torch.Tensor:
        """ε for an image of this (padded) size, the same for every image and every call.

        Drawn once per size and kept: training asks for it on every batch."""
        key = (channels, h, w)
        if key not in self._noise:
            g = torch.Generator().manual_seed(self.noise_seed)
            self._noise[key] = torch.randn(key, generator=g)
        return self._noise[key]

    def _prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if images.ndim != 4:
            raise ConfigError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] != self.unet.config.in_channels:
            raise ConfigError(f"images have {images.shape[1]} band(s) but the DDPM was trained on "
                              f"{self.unet.config.in_channels}")
        return pad_to(images, self.stride)

    def _noised(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t`` for every (t, image), t-major: rows ``[t0: img0..imgN-1, t1: ...]``."""
        n, c, hp, wp = images.shape
        eps = self.noise(c, hp, wp).to(images.device, images.dtype)
        t = torch.tensor(self.timesteps, device=images.device).repeat_interleave(n)
        x0 = images.repeat(len(self.timesteps), 1, 1, 1)
        return self.scheduler.add_noise(x0, eps.expand_as(x0), t), t

    def _finish(self, raw: dict[int, torch.Tensor], n: int, h: int, w: int) -> dict[FeatureKey, torch.Tensor]:
        out: dict[FeatureKey, torch.Tensor] = {}
        for b, feat in raw.items():
            s = self.info[b]["stride"]
            feat = feat[..., : math.ceil(h / s), : math.ceil(w / s)]
            if self.upsample and feat.shape[-2:] != (h, w):
                feat = F.interpolate(feat, size=(h, w), mode="bilinear", align_corners=False)
            for i, t in enumerate(self.timesteps):
                out[(t, b)] = feat[i * n:(i + 1) * n]
        return out

    # -- the fast path --------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[FeatureKey, torch.Tensor]:
        return self.compute(images)

    def compute(self, images: torch.Tensor) -> dict[FeatureKey, torch.Tensor]:
        """The fast path under the caller's autograd mode: Diff-HRNet calls it under ``no_grad``
        for a frozen DDPM (``inference_mode`` tensors cannot feed layers that train) and with
        gradients when the DDPM is fine-tuned."""
        images, h, w = self._prepare(images)
        x, t = self._noised(images)
        return self._finish(self._forward_until(x, t), images.shape[0], h, w)

    def _forward_until(self, sample: torch.Tensor, timesteps: torch.Tensor) -> dict[int, torch.Tensor]:
        """``UNet2DModel.forward`` (diffusers) up to ``up_blocks[max(B)]``, returning those outputs."""
        u = self.unet
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = u.time_embedding(u.time_proj(timesteps).to(dtype=u.dtype))
        skip = sample
        sample = u.conv_in(sample)
        res: tuple[torch.Tensor, ...] = (sample,)
        for down in u.down_blocks:
            if hasattr(down, "skip_conv"):
                sample, r, skip = down(hidden_states=sample, temb=emb, skip_sample=skip)
            else:
                sample, r = down(hidden_states=sample, temb=emb)
            res += r
        if u.mid_block is not None:
            sample = u.mid_block(sample, emb)
        out: dict[int, torch.Tensor] = {}
        skip = None
        for i, up in enumerate(u.up_blocks[: max(self.blocks) + 1]):
            r, res = res[-len(up.resnets):], res[: -len(up.resnets)]
            if hasattr(up, "skip_conv"):
                sample, skip = up(sample, r, emb, skip)
            else:
                sample = up(sample, r, emb)
            if i in self.blocks:
                out[i] = sample
        return out

    def compute_tiled(self, image: torch.Tensor, window: int = 128, overlap: float = 0.25,
                      **kw) -> dict[FeatureKey, torch.Tensor]:
        """Whole-tile features in blended windows: :func:`~diffhrnet_lab.features.tile_cache.compute_tiled`."""
        from .tile_cache import compute_tiled

        return compute_tiled(self, image, window=window, overlap=overlap, **kw)

    # -- the naive way, for tests and benchmarks ------------------------------------------------
    @torch.inference_mode()
    def naive(self, images: torch.Tensor) -> dict[FeatureKey, torch.Tensor]:
        """DDPM-Seg's way: one full U-Net forward per timestep, features taken with forward hooks."""
        images, h, w = self._prepare(images)
        n, c, hp, wp = images.shape
        eps = self.noise(c, hp, wp).to(images.device, images.dtype)
        captured: dict[int, torch.Tensor] = {}
        hooks = [self.unet.up_blocks[b].register_forward_hook(
            lambda mod, inp, outp, b=b: captured.__setitem__(b, outp[0] if isinstance(outp, tuple) else outp))
            for b in self.blocks]
        per_t: list[dict[int, torch.Tensor]] = []
        try:
            for t in self.timesteps:
                tt = torch.full((n,), t, device=images.device, dtype=torch.long)
                self.unet(self.scheduler.add_noise(images, eps.expand_as(images), tt), tt)
                per_t.append(dict(captured))
        finally:
            for hk in hooks:
                hk.remove()
        raw = {b: torch.cat([d[b] for d in per_t]) for b in self.blocks}
        return self._finish(raw, n, h, w)

    # -- streaming and caching ------------------------------------------------------------------
    def cache_key(self) -> str:
        if self._checkpoint_id is None:
            self._checkpoint_id = state_hash(self.unet)
        ts = "-".join(map(str, self.timesteps))
        bs = "-".join(map(str, self.blocks))
        return f"{self._checkpoint_id[:16]}/t{ts}_b{bs}_seed{self.noise_seed}{'_up' if self.upsample else ''}"

    def _cache_path(self, image_id: str, sub: str = "") -> Path:
        """One file per image id (path separators flattened), under the settings' key."""
        assert self.cache_dir is not None
        safe = image_id.replace("/", "__").replace("\\", "__")
        return self.cache_dir / self.cache_key() / sub / f"{safe}.safetensors"

    def extract(self, images: torch.Tensor, ids: Sequence[str] | None = None) -> dict[FeatureKey, torch.Tensor]:
        """Like ``__call__`` but served from / written to the cache when ``cache_dir`` and ``ids`` are set."""
        if self.cache_dir is None or ids is None:
            return self(images)
        paths = [self._cache_path(i) for i in ids]
        cached = [load_tensors(p) if p.is_file() else None for p in paths]
        missing = [i for i, c in enumerate(cached) if c is None]
        if missing:
            fresh = self(images[missing])
            for j, i in enumerate(missing):
                item = {f"{t}_{b}": v[j].contiguous() for (t, b), v in fresh.items()}
                atomic_save_tensors(paths[i], item)
                cached[i] = item
        return {(t, b): torch.stack([c[f"{t}_{b}"] for c in cached]).to(images.device) for t, b in self.keys}

    def stream(self, batches: Iterable[dict], progress: bool = False) -> Iterator[tuple[list[str], dict[FeatureKey, torch.Tensor]]]:
        """Features batch by batch for ``{"image", "id"}`` dicts (a DataLoader): memory stays flat."""
        from tqdm.auto import tqdm

        for batch in tqdm(batches, desc="DDPM features", disable=not progress):
            ids = list(batch["id"])
            yield ids, self.extract(batch["image"], ids)


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
