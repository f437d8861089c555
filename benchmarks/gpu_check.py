"""One short run that answers the GPU questions: is stage 2 as fast as a bare loop there, how long does the
paper's 100-epoch protocol take (goal: <= 2 minutes on one H100/H200 for 175 images at 256 px), and is data
loading ever the bottleneck?

    python benchmarks/gpu_check.py                 # on a GPU machine (about 5 minutes); writes benchmarks/results/
    python benchmarks/gpu_check.py --tiny          # the same code path on a CPU in seconds (what the test runs)

1. Throughput: benchmarks/throughput.py (scratch and frozen, pipeline vs bare loop, 100 timed steps, 2 repeats).
2. Protocol: ``python -m defectseg.finetune trainer=gpu freeze=scratch`` as configured (175 synthetic images,
   256 px, batch 8, 100 epochs, validation every epoch, test), timed from the call to its return; a callback
   records how long each training step waited for its batch (loader wait) against the step's whole time, and
   ``nvidia-smi`` is sampled every 100 ms for the GPU's utilisation (idle fraction = samples at 0 %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmarks import throughput  # noqa: E402
from benchmarks.results_log import append_result_line, cpu_isa, isa_text, shown, write_result  # noqa: E402

TINY = ["dataset.image_size=32", "dataset.synthetic.n_images=12", "model.channels=[4,8,16,32,64]"]


class LoaderWait(L.Callback):
    """Seconds each training step waited for its batch (end of the previous step to the start of this one)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.last_end: float | None = None
        self.step_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_end = time.perf_counter()  # the first batch's wait includes the loader's start

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.step_start = time.perf_counter()
        if self.last_end is not None:
            self.waits.append(self.step_start - self.last_end)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.last_end = time.perf_counter()
        self.steps.append(self.last_end - self.step_start)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_end = None  # validation is not loader wait

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wait, compute = sum(self.waits), sum(self.steps)
        record = {
            "steps": len(self.steps),
            "loader_wait_seconds": round(wait, 3),
            "step_seconds": round(compute, 3),
            "loader_wait_fraction": round(wait / (wait + compute), 4) if wait + compute else 0.0,
            "loader_wait_max_seconds": round(max(self.waits, default=0.0), 4),
        }
        self.path.write_text(json.dumps(record))


class GpuSampler:
    """nvidia-smi utilisation every 100 ms in a thread; nothing without nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.process: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        smi = shutil.which("nvidia-smi")
        if smi and torch.cuda.is_available():
            query = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100", "-i", "0"]
            self.process = subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):  # a header or a "[N/A]"
                self.samples.append(float(line.strip()))

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"samples": 0, "note": "no nvidia-smi or no GPU: utilisation not sampled"}
        return {
            "samples": len(self.samples),
            "mean_utilization_percent": round(sum(self.samples) / len(self.samples), 1),
            "idle_fraction": round(sum(s == 0 for s in self.samples) / len(self.samples), 4),
        }


def protocol(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The paper's stage-2 protocol as `python -m defectseg.finetune` runs it, timed end to end."""
    from defectseg.finetune import run_finetune

    wait_file = workdir / "loader_wait.json"
    overrides = [
        "freeze=scratch",
        f"trainer={'gpu' if torch.cuda.is_available() else 'cpu'}",
        f"paths.root_dir={workdir}",
        f"paths.output_dir={workdir / 'protocol'}",
        "trainer.enable_progress_bar=false",
        f"+callbacks.loader_wait={{_target_:benchmarks.gpu_check.LoaderWait,path:'{wait_file}'}}",
    ]
    if args.tiny:
        overrides += [*TINY, "dataset.batch_size=2", "trainer.max_epochs=2", "trainer.limit_train_batches=2"]
        overrides += ["trainer.limit_val_batches=1"]
    overrides += args.set
    cfg = throughput.compose(overrides)
    with GpuSampler() as sampler:
        start = time.perf_counter()
        run_finetune(cfg)
        seconds = time.perf_counter() - start
    return {
        "overrides": overrides[:2] + overrides[5:],
        "epochs": int(cfg.trainer.max_epochs),
        "images": int(cfg.dataset.synthetic.n_images),
        "image_size": int(cfg.dataset.image_size),
        "wall_seconds": round(seconds, 1),
        "loader": json.loads(wait_file.read_text()),
        "gpu": sampler.summary(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from defectseg.training.runner import device_name

    bench_args = ["--modes", "scratch,frozen", "--peer", "off", "--no-record"]
    if args.tiny:
        bench_args += ["--image-size", "32", "--steps", "2", "--warmup", "1", "--peak-size", "64"]
        bench_args += [f"--set={override}" for override in TINY[1:]]
    else:
        bench_args += ["--steps", "100", "--warmup", "10", "--repeats", "2"]
    workdir = Path(tempfile.mkdtemp(prefix="defectseg_gpu_check_"))
    try:
        bench_args += [f"--set=paths.root_dir={workdir}"]
        speed = throughput.run(throughput.parse_args(bench_args))
        stage2 = protocol(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": device_name("auto"),
        "cpu_isa": cpu_isa(),
        "cpus": os.cpu_count(),
        "tiny": args.tiny,
        "torch": torch.__version__,
        "throughput": {
            mode: {k: r[k] for k in ("pipeline_images_per_second", "bare_images_per_second", "ratio")}
            for mode, r in speed["training"].items()
        },
        "precision": speed["precision"],
        "protocol": stage2,
    }


def record(result: dict[str, Any]) -> Path:
    path = write_result("gpu_check", result)
    speed = "; ".join(f"{mode}: pipeline/bare **{r['ratio']:.3f}**" for mode, r in result["throughput"].items())
    p = result["protocol"]
    gpu = p["gpu"]
    idle = f", GPU idle {100 * gpu['idle_fraction']:.0f} %" if gpu.get("samples") else ""
    line = (
        f"- {result['date'][:16].replace('T', ' ')} · {result['machine']} · host {isa_text(result['cpu_isa'])}, "
        f"{result['cpus']} CPUs · gpu_check{' (tiny dry run)' if result['tiny'] else ''} · {speed} · "
        f"protocol {p['epochs']} epochs x {p['images']} images at {p['image_size']} px: **{p['wall_seconds']:.0f} s** "
        f"wall, loader wait {100 * p['loader']['loader_wait_fraction']:.1f} % of training steps{idle} · `{shown(path)}`"
    )
    append_result_line(line)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny images and 2 short epochs: checks the path on a CPU")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra stage-2 override")
    parser.add_argument("--no-record", dest="record", action="store_false")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.record:
        print(f"[gpu-check] written {shown(record(result))}")


if __name__ == "__main__":
    main()
