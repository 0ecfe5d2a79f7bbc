"""Shared pooling of the DDPM streams in multistage fusion (``models.fusion.PooledStreams``): a
Diff-HRNet training step (quick-profile sizes, 96² x 4, default keys) with each stream pooled once
per branch size against once per fusion point, timed in alternating blocks.

    python benchmarks/pooled_streams.py
"""
import time, torch, torch.nn.functional as F
from diffhrnet_lab.ddpm.unet import build_unet, build_scheduler
from diffhrnet_lab.features.extractor import FeatureExtractor
from diffhrnet_lab.models.segmenters import DiffHRNet
from diffhrnet_lab.models import fusion
torch.manual_seed(0)
fx = FeatureExtractor(build_unet("tiny", 3, 96), build_scheduler(), (50, 150, 250), (0, 1))
m = DiffHRNet(6, 3, extractor=fx, feature_norm=True, residual=True).train()
x = torch.randn(4, 3, 96, 96); y = torch.randint(0, 6, (4, 96, 96))
with torch.no_grad():
    feats = fx.compute(x); streams = [feats[k] for k in fx.keys]
print([tuple(s.shape) for s in streams])
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-3)
memo = fusion.PooledStreams.at
def nomemo(self, size):
    key = (int(size[0]), int(size[1]))
    return [F.adaptive_avg_pool2d(f, key) if f.shape[-2] > key[0] else f for f in self.streams]
def step():
    out = m(x, streams); loss = F.cross_entropy(out, y); opt.zero_grad(); loss.backward(); opt.step()
t = {"shared": 0.0, "per point": 0.0}
for _ in range(3): step()
for block in range(4):
    for name, fn in (("per point", nomemo), ("shared", memo)):
        fusion.PooledStreams.at = fn
        t0 = time.perf_counter()
        for _ in range(10): step()
        t[name] += time.perf_counter() - t0
print({k: round(v / 40 * 1000, 1) for k, v in t.items()}, "ms/step; ratio", round(t["per point"] / t["shared"], 3))
