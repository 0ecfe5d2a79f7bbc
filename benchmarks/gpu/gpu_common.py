"""What the H100 runs of 2026-11-27 (issue 15) share: JSON-lines records, a per-category kernel
profile, and the base U-Net's step fed one batch already on the device.  Run the scripts from the
repository root (``python benchmarks/gpu/h100_2026-11-27_run3.py``); ``DRY=1`` runs them on a CPU
with tiny sizes."""
import gc, json, os, time, traceback
from collections import defaultdict

import torch

from diffhrnet_lab.config import profile_config, replace
from diffhrnet_lab.experiments import pipeline_bench as pb

OUT = os.environ.get("OUT", "/tmp")
TINY = os.environ.get("DRY") == "1"
T0 = time.time()
CUDA = torch.cuda.is_available()


def emitter(jsonl: str, budget: float = float("inf")):
    """``emit(name, fn, need=0)``: run ``fn`` unless fewer than ``need`` of ``budget`` seconds are
    left; print its dict as one JSON line and append it to ``$OUT/<jsonl>``; an error is recorded,
    not raised, so that the other sections still run."""
    def emit(name, fn, need=0.0):
        if time.time() - T0 + need > budget:
            print(f"[skip] {name}: out of time", flush=True)
            return
        t = time.time()
        try:
            r = fn()
        except Exception as exc:
            r = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
        r = {"name": name, "wall_s": round(time.time() - t, 1), **r}
        print(json.dumps(r), flush=True)
        with open(os.path.join(OUT, jsonl), "a") as fh:
            fh.write(json.dumps(r) + "\n")
        gc.collect()
        if CUDA:
            torch.cuda.empty_cache()
    return emit


# -- the base U-Net's step: compiled, NCHW against channels-last, with a kernel profile -------------
def category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa")):
        return "attention"
    if any(k in n for k in ("nchwtonhwc", "nhwctonchw", "transpose", "permute")):
        return "layout transforms"
    if "triton_tem" in n:
        return "conv / gemm"
    if "triton" in n:
        return "inductor " + ("reductions" if ("red_" in n or "per_" in n) else "pointwise")
    if any(k in n for k in ("conv", "xmma", "cudnn", "implicit", "wgrad", "dgrad", "fprop", "cutlass", "gemm",
                            "sm90", "sm80", "nvjet", "cublas")):
        return "conv / gemm"
    if any(k in n for k in ("multi_tensor", "foreach", "adam", "lerp")):
        return "optimizer / EMA"
    if any(k in n for k in ("memcpy", "memset", "copy", "fill")):
        return "copies / fills"
    if "norm" in n:
        return "norm (eager)"
    return "other"


def profile_steps(step, n):
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CUDA] if CUDA else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        for k in range(n):
            step(k)
        if CUDA:
            torch.cuda.synchronize()
    per_kernel = defaultdict(float)
    for e in prof.key_averages():
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0.0)
        t = dev if CUDA else e.self_cpu_time_total
        if t:
            per_kernel[e.key] += t / 1000.0 / n  # ms per step
    cats = defaultdict(float)
    for k, v in per_kernel.items():
        cats[category(k)] += v
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:25]
    return {"device_ms_per_step": round(sum(per_kernel.values()), 1),
            "categories_ms": {k: round(v, 1) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": [[k[:110], round(v, 2)] for k, v in top]}


full = profile_config("full")
ddpm = full.ddpm if not TINY else replace(full.ddpm, preset="tiny", sample_size=32, batch_size=4, num_workers=0)
FLOPS = 80.7e12 if not TINY else None  # counted on the H100 (BENCHMARKS.md), per step of 32 × 256²


def ddpm_variant(channels_last: bool, mode: str, steps: int, do_profile: bool = True):
    from diffhrnet_lab.data.datasets import UnlabelledPool
    from diffhrnet_lab.training.accelerator import make_accelerator, step_loader
    from diffhrnet_lab.training.pretrain import setup
    torch._dynamo.reset()
    cfg = replace(ddpm, channels_last=channels_last, compile=mode)
    acc = make_accelerator(cfg.mixed_precision)
    pool = UnlabelledPool(pb._pool_dir(), crop_size=cfg.sample_size, augment=True, seed=0)
    pool.samples_per_epoch = max(len(pool.paths), cfg.batch_size)
    tr = setup(cfg, pool, acc).prepare()
    x = next(iter(step_loader(acc, pool, cfg.batch_size, 0, 0, 1, 0)))["image"]
    t = time.time()
    tr.step(x, 0)
    pb._sync(acc.device)
    first_s = time.time() - t
    for k in range(1, 3):
        tr.step(x, k)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    pb._sync(acc.device)
    t = time.perf_counter()
    for k in range(steps):
        tr.step(x, 3 + k)
    pb._sync(acc.device)
    sps = steps / (time.perf_counter() - t)
    out = {"channels_last": channels_last, "compile": mode, "batch": cfg.batch_size, "size": cfg.sample_size,
           "first_step_s": round(first_s, 1), "model_only_steps_per_s": round(sps, 3)}
    if CUDA:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = pb.bf16_peak(acc.device)
        if peak and FLOPS:
            out["mfu"] = round(FLOPS * sps / peak, 4)
    if do_profile:
        prof = profile_steps(lambda k: tr.step(x, 100 + k), 2)
        if FLOPS and "conv / gemm" in prof["categories_ms"]:
            prof["conv_gemm_tflops_if_all_flops_there"] = round(FLOPS / (prof["categories_ms"]["conv / gemm"] / 1000) / 1e12, 1)
        out.update(prof)
    return out


