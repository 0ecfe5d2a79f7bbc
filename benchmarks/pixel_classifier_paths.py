"""The pixel classifier's two equal computations, side by side (issue 15: speed and memory).

``upsample``: every DDPM stream resized to full resolution and concatenated (576 channels with the
default keys), then the MLP; ``per-block``: the first layer applied at each block's own resolution,
then its 128 channels resized (``PixelMLP.classify_streams``).  Prints one JSON line: training step
(forward + backward, batch 4 at 96², the quick profile) and scoring of one window, in ms (median of
``--repeat``), their ratios, the largest difference of the outputs, and the bytes of the largest
tensor each path builds for a whole 2061x1817 Dubai image.

    OMP_NUM_THREADS=1 python benchmarks/pixel_classifier_paths.py [--repeat 10] [--window 512]
"""

import argparse
import json
import statistics
import time

import torch

from diffhrnet_lab.models.fusion import pixel_mlp, upsampled


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 1)


def streams_for(batch: int, size: int) -> list[torch.Tensor]:
    # the tiny U-Net's blocks 0 and 1 (96 channels, strides 4 and 2) at t = 50, 150, 250
    return [torch.randn(batch, 96, size // s, size // s) for _ in range(3) for s in (4, 2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    torch.manual_seed(0)
    mlp = pixel_mlp(576, 6)
    train, window = streams_for(4, 96), streams_for(1, args.window)

    def step(path, streams, size):
        def run():
            if path == "upsample":
                out = mlp(upsampled(streams, size, torch.float32))
            else:
                out = mlp.classify_streams(streams, size, torch.float32)
            if torch.is_grad_enabled():
                out.sum().backward()
            return out
        return run

    result = {"threads": torch.get_num_threads()}
    mlp.train()
    for path in ("upsample", "per-block"):
        result[f"train_ms_{path}"] = median_ms(step(path, train, (96, 96)), args.repeat)
    mlp.eval()
    with torch.no_grad():
        for path in ("upsample", "per-block"):
            result[f"score_ms_{path}"] = median_ms(step(path, window, (args.window,) * 2), args.repeat)
        a = step("upsample", window, (args.window,) * 2)()
        b = step("per-block", window, (args.window,) * 2)()
    result["train_speedup"] = round(result["train_ms_upsample"] / result["train_ms_per-block"], 2)
    result["score_speedup"] = round(result["score_ms_upsample"] / result["score_ms_per-block"], 2)
    result["max_abs_diff"] = float((a - b).abs().max())
    pixels = 2061 * 1817
    result["largest_tensor_gb_whole_image"] = {"upsample": round(576 * pixels * 4 / 1e9, 2),
                                               "per-block": round(128 * pixels * 4 / 1e9, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
