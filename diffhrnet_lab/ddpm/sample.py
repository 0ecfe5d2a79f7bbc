"""Generation and held-out denoising loss: the two ways to see whether a DDPM learned anything."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm


@torch.inference_mode()
def generate(unet: UNet2DModel, scheduler: DDPMScheduler, n: int, size: int, steps: int = 50, seed: int = 0,
             progress: bool = False) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) over ``steps`` evenly spaced timesteps.

    Returns ``(n, C, size, size)`` in ``[-1, 1]``.  Fewer steps than training's 1000 give blurrier
    but recognisable samples, which is all a progress picture needs.
    """
    device = next(unet.parameters()).device
    sched = DDPMScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps, device=device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((n, unet.config.in_channels, size, size), generator=g).to(device)
    for t in tqdm(sched.timesteps, desc="sampling", disable=not progress, leave=False):
        eps = unet(x, t).sample
        x = sched.step(eps, t, x, generator=g).prev_sample
    return x.clamp(-1, 1).float().cpu()


@torch.inference_mode()
def denoising_loss(unet: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor,
                   timesteps: tuple[int, ...] = (50, 150, 250, 500, 750), seed: int = 0) -> float:
    """Mean ε-prediction MSE on ``images`` at fixed timesteps with fixed noise (Ho et al. 2020, Eq. 14).

    Fixed t and ε make the number comparable between models; an untrained U-Net scores about 1.
    """
    device = next(unet.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(seed)
    losses = []
    for t in timesteps:
        noise = torch.randn(images.shape, generator=g)
        tt = torch.full((images.shape[0],), t, dtype=torch.long)
        x_t = scheduler.add_noise(images, noise, tt)
        pred = unet(x_t.to(device), tt.to(device)).sample.float().cpu()
        losses.append(torch.mean((pred - noise) ** 2).item())
    return float(sum(losses) / len(losses))


def save_sample_grid(images: torch.Tensor, path, cols: int = 8) -> None:
    """Samples ``(N, C, H, W)`` in ``[-1, 1]`` as one PNG grid of their first three bands (grey for
    one band), written atomically."""
    from pathlib import Path

    from torchvision.utils import save_image

    from ..fileio import atomic_path

    rgb = images[:, :3] if images.shape[1] >= 3 else images[:, :1].repeat(1, 3, 1, 1)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_image((rgb.float() + 1) / 2, tmp, nrow=cols, padding=2, pad_value=1.0, format="png")
