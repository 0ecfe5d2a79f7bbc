"""Third GPU pass (issue 15): where the compiled base U-Net's step spends its time (kernel profile),
channels-last under torch.compile, and the 8-bit fine-tuning transport on a GPU."""
import dataclasses, os, time

import torch

from diffhrnet_lab.config import replace
from diffhrnet_lab.experiments import pipeline_bench as pb
from gpu_common import CUDA, T0, TINY, ddpm_variant, emitter, full

emit = emitter("gpu3.jsonl", float(os.environ.get("BUDGET", "420")))
emit("machine", lambda: {"device": torch.cuda.get_device_name(0) if CUDA else "cpu", "torch": torch.__version__,
                         "cuda": torch.version.cuda, "cpus": os.cpu_count()})

# -- fine-tuning transport: float32 from the workers against 8-bit finished on the device ----------
ft_full = dataclasses.replace(full, data=replace(full.data, crop_size=64 if TINY else full.data.crop_size,
                                                 batch_size=2 if TINY else full.data.batch_size),
                              train=replace(full.train, num_workers=0 if TINY else 4))
n_in = 3 if TINY else 40
for compact in (False, True):
    emit(f"finetune_input_full_settings_{'compact' if compact else 'float'}",
         lambda c=compact: pb.bench_finetune(ft_full, n_in, 2, input_only=True, compact=c))
ft = dataclasses.replace(full, data=replace(full.data, crop_size=64 if TINY else 256, batch_size=2 if TINY else 8),
                         model=replace(full.model, variant="w18_small"),
                         train=replace(full.train, num_workers=0 if TINY else 4, compile=""))
for compact in (False, True):
    emit(f"finetune_w18s_256x8_eager_{'compact' if compact else 'float'}",
         lambda c=compact: pb.bench_finetune(ft, 3 if TINY else 30, 1 if TINY else 5, compact=c))


mode = "default" if CUDA else ""
n = 3 if TINY else 12
emit("ddpm_base_compile_nchw", lambda: ddpm_variant(False, mode, n), need=0 if TINY else 60)
emit("ddpm_base_compile_channels_last", lambda: ddpm_variant(True, mode, n), need=0 if TINY else 100)
emit("ddpm_base_eager_nchw_profile", lambda: ddpm_variant(False, "", 4 if not TINY else 2), need=0 if TINY else 30)


def with_cudnn_benchmark():
    torch.backends.cudnn.benchmark = True
    try:
        return ddpm_variant(True, mode, n, do_profile=False)
    finally:
        torch.backends.cudnn.benchmark = False


emit("ddpm_base_compile_channels_last_cudnn_benchmark", with_cudnn_benchmark, need=0 if TINY else 100)
print("done in", round(time.time() - T0), "s", flush=True)
