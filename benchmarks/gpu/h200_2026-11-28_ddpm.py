"""Issue 16, H29: the embedded `tiny` DDPM pretrained for as many steps as one short GPU lease
allows, instead of the 1500 steps the 2-core CPU gave it.

Same U-Net, pool (the 36 embedded Dubai images), 64² crops, schedule, learning rate and seed as
``data_samples/ddpm_dubai``; batch 32 instead of 16 (the full profile's batch; a 2.7 M-parameter
U-Net at 64² is launch-bound on a GPU, so the larger batch costs no time) and float32 (bf16
autocast only adds cast kernels to a launch-bound step). The step count cannot be chosen before
the lease: a short calibration run measures steps/s, and the main run takes the count that fits
the time left (the cosine schedule needs it fixed up front). The bundle comes back as one tar.

Run from the repository root: ``python benchmarks/gpu/h200_2026-11-28_ddpm.py``; ``DRY=1`` runs it
on a CPU with tiny sizes; ``DEADLINE_S`` is the seconds the whole script may take."""
import csv, json, os, subprocess, sys, tarfile, time

T0 = time.time()
OUT = os.environ.get("OUT", "/tmp/h29_out")
DRY = os.environ.get("DRY") == "1"
DEADLINE = float(os.environ.get("DEADLINE_S", "480"))
WORK = "/tmp/h29"
POOL = "data_samples/dubai_aerial/images"
os.makedirs(OUT, exist_ok=True)
LOG = open(os.path.join(OUT, "h29_log.txt"), "a")


def say(*a):
    msg = " ".join(str(x) for x in a)
    print(msg, flush=True)
    LOG.write(msg + "\n")
    LOG.flush()


def pretrain(out, steps, extra, timeout):
    args = ["pretrain", "--profile", "quick", "--pool", POOL, "--out", out, "--steps", str(steps),
            "--batch-size", "4" if DRY else "32", "--mixed-precision", "no",
            "--set", f"ddpm.num_workers={0 if DRY else 4}", "--set", "ddpm.log_every=50",
            "--set", f"ddpm.sample_every={steps}"] + extra
    if DRY:
        args += ["--set", "ddpm.sample_size=32"]
    t = time.time()
    r = subprocess.run([sys.executable, "-c", "from diffhrnet_lab.cli import main; raise SystemExit(main())", *args],
                       timeout=timeout, capture_output=True, text=True)
    say(f"$ diffhrnet-lab {' '.join(args)}  -> rc {r.returncode} in {time.time() - t:.1f} s")
    say(r.stdout[-2000:], r.stderr[-3000:] if r.returncode else "")
    return r.returncode


def rows(out):
    with open(os.path.join(out, "loss_log.csv")) as fh:
        return list(csv.DictReader(fh))


import torch  # noqa: E402

say(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}))
calib_steps = 60 if DRY else 400
rc = pretrain(f"{WORK}/calib", calib_steps, ["--set", "ddpm.checkpoint_every=100000"], timeout=DEADLINE / 3)
log = rows(f"{WORK}/calib")
a, b = (log[1] if len(log) > 2 else log[0]), log[-1]  # after the first logged interval: loader start-up and warm-up excluded
rate = (int(b["step"]) - int(a["step"])) / max(float(b["seconds"]) - float(a["seconds"]), 1e-6)
left = DEADLINE - (time.time() - T0) - (20 if DRY else 75)  # export, sample grid, tar
steps = int(rate * left * 0.8) // 500 * 500 if not DRY else 100
steps = max(steps, 1500 if not DRY else 100)
say(json.dumps({"calibration_steps_per_s": round(rate, 2), "seconds_left": round(left), "main_steps": steps,
                "calibration_loss_last": b["loss"]}))
main_out = f"{WORK}/main"
rc = pretrain(main_out, steps, ["--set", f"ddpm.checkpoint_every={max(steps // 4, 50)}", "--export",
                                f"{WORK}/ddpm_dubai_gpu", "--export-half"],
              timeout=max(left, 30))
log = rows(main_out)
say(json.dumps({"main_rc": rc, "steps_logged": log[-1]["step"], "loss_last": log[-1]["loss"],
                "seconds": log[-1]["seconds"],
                "steps_per_s": round(int(log[-1]["step"]) / float(log[-1]["seconds"]), 2)}))
with tarfile.open(os.path.join(OUT, "ddpm_dubai_gpu.tar"), "w") as tar:
    if os.path.isdir(f"{WORK}/ddpm_dubai_gpu"):
        tar.add(f"{WORK}/ddpm_dubai_gpu", arcname="ddpm_dubai_gpu")
    tar.add(os.path.join(main_out, "loss_log.csv"), arcname="main_loss_log.csv")
    tar.add(os.path.join(f"{WORK}/calib", "loss_log.csv"), arcname="calib_loss_log.csv")
say(f"done in {time.time() - T0:.0f} s")
