"""Is the pipeline as fast as the hardware? Training throughput of the real stage-2 pipeline
against a bare PyTorch loop on the same model, batch, precision and memory format.

    make bench                                             # unet_paper, 256 px, batch 8, scratch + frozen encoder
    python benchmarks/throughput.py --steps 40 --repeats 3 # longer and repeated, for a quiet machine
    python benchmarks/throughput.py --compile              # the same with torch.compile (compare with a run without)
    python benchmarks/throughput.py --compile-ab           # also eager vs compiled bare steps, interleaved
    python benchmarks/throughput.py --set trainer.enable_progress_bar=false   # any stage-2 override, to find a cost

Pipeline: ``run_finetune`` itself (the Lightning Trainer from ``conf/``, SegmentationTask, the
SegmentationDataModule on the embedded synthetic steel set with its cache and augmentations,
checkpointing, TensorBoard logging, progress bar). Bare: a loop over one batch already on the
device: uint8 -> float, autocast forward, loss, backward, Adam step. The pipeline is clocked
from the end of its ``warmup``-th training step to the end of its last, so start-up, validation,
checkpoints and test are outside the window, and the data loading between steps is inside it.
Both run in this one process, back to back, alternating when ``--repeats`` > 1 (medians reported).

Also measured: FLOPs of one training step (torch.utils.flop_counter) and the GFLOP/s that makes
against a measured matmul peak; peak memory (CUDA: max allocated per phase; CPU: the process's
resident high-water mark, which only grows); inference throughput (eval, inference_mode).

Writes ``benchmarks/results/throughput_<date>_<device>.json`` and appends one line to
``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's defectseg, and this module for Hydra's _target_

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.results_log import RESULTS_LOG, cpu_isa, median, record, shown  # noqa: E402

MODES = {"scratch": "scratch", "frozen": "encoder"}  # benchmark name -> freeze policy


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's resident high-water mark (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepTimer(L.Callback):
    """Clocks the pipeline's steady state: from the end of training step ``warmup`` to that of ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int, path: str) -> None:
        self.warmup, self.steps, self.path = int(warmup), int(steps), Path(path)
        self.done = 0
        self.start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reset_peak_memory(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.done += 1
        if self.done == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()
        elif self.done == self.warmup + self.steps:
            synchronize(pl_module.device)
            seconds = time.perf_counter() - self.start
            record = {
                "seconds": seconds,
                "steps": self.steps,
                "images": self.steps * len(batch["image"]),
                "peak_memory_mib": peak_memory_mib(pl_module.device),
            }
            self.path.write_text(json.dumps(record))


def compose(overrides: list[str]) -> Any:
    """The stage-2 config exactly as `python -m defectseg.finetune OVERRIDES` would build it (output dir given)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from defectseg.config.schemas import register
    from defectseg.utils.naming import register_resolvers

    register_resolvers()
    register()  # conf/finetune.yaml extends finetune_schema: without it a fresh process cannot compose
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return hydra_compose(config_name="finetune", overrides=overrides)


def autocast_for(precision: str, device: torch.device) -> Any:
    """The autocast Lightning's mixed-precision plugin puts around the forward pass."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision in ("32-true", "32"):
        return nullcontext()
    raise SystemExit(f"error: the bare loop mirrors bf16-mixed, 16-mixed and 32-true, not precision={precision}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from defectseg.training.runner import resolve_precision

        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = str(resolve_precision(args.precision, "auto"))
        self.base_overrides = [
            f"dataset.image_size={args.image_size}",
            f"dataset.batch_size={args.batch_size}",
            f"channels_last={str(args.channels_last).lower()}",
            f"compile={str(args.compile).lower()}",
            f"trainer.precision={self.precision}",
        ]
        self.base_overrides += args.set  # the bare loop takes model, optimiser and loss from the same config
        self.cfg = compose(self.base_overrides)
        self._workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """Scratch space for the pipeline runs (made on first use, removed by run())."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="defectseg_bench_"))
        return self._workdir

    # ---- the two contenders -------------------------------------------------------------

    def pipeline(self, mode: str) -> dict[str, float]:
        """One stage-2 run through run_finetune, sized so that one epoch holds warmup + steps batches."""
        from defectseg.finetune import run_finetune

        args = self.args
        run_dir = self.workdir / f"pipeline_{mode}_{time.monotonic_ns()}"
        timing = run_dir / "step_timer.json"
        overrides = [
            *self.base_overrides,
            f"freeze={MODES[mode]}",
            f"pretrained_encoder={self.encoder_file()}",
            f"paths.output_dir={run_dir}",
            "trainer.max_epochs=1",
            f"dataset.samples_per_epoch={(args.warmup + args.steps) * args.batch_size}",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "calibration_batches=1",
            f"+callbacks.step_timer={{_target_:benchmarks.throughput.StepTimer,warmup:{args.warmup},steps:{args.steps},path:'{timing}'}}",
        ]
        run_finetune(compose(overrides))
        record = json.loads(timing.read_text())
        return {"images_per_second": record["images"] / record["seconds"], "peak_memory_mib": record["peak_memory_mib"]}

    def bare(self, mode: str) -> dict[str, float]:
        """The same training step with nothing around it: one batch resident on the device."""
        args = self.args
        step = self.training_step(mode, args.compile)
        for _ in range(args.warmup):
            step()
        synchronize(self.device)
        reset_peak_memory(self.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(self.device)
        seconds = time.perf_counter() - start
        return {
            "images_per_second": args.steps * args.batch_size / seconds,
            "peak_memory_mib": peak_memory_mib(self.device),
        }

    def training_step(self, mode: str, compile: bool) -> Callable[[], None]:
        """One bare step: uint8 -> float, autocast forward and loss, backward, the pipeline's fused Adam."""
        from defectseg.training.modules import adam, images_to_float

        channels_last = self.args.channels_last
        model, loss_fn = self.model(mode, compile), self.loss()
        optimizer = adam(model, float(self.cfg.optim.lr), float(self.cfg.optim.weight_decay))
        images, masks = self.batch()
        autocast = autocast_for(self.precision, self.device)
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "16-mixed" else None

        def step() -> None:
            with autocast:
                loss = loss_fn(model(images_to_float(images, channels_last)), masks)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)

        return step

    def compile_ab(self, mode: str, rounds: int = 6) -> dict[str, float]:
        """Eager against torch.compile on the bare step, interleaved in short chunks: drifting load hits both alike."""
        args = self.args
        steps = {"eager": self.training_step(mode, compile=False), "compiled": self.training_step(mode, compile=True)}
        warmup_seconds, seconds = {}, {name: 0.0 for name in steps}
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.warmup):
                step()
            synchronize(self.device)
            warmup_seconds[name] = time.perf_counter() - start
        chunk = max(1, args.steps // rounds)
        for _ in range(rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(chunk):
                    step()
                synchronize(self.device)
                seconds[name] += time.perf_counter() - start
        speed = {name: rounds * chunk * args.batch_size / value for name, value in seconds.items()}
        return {
            "eager_images_per_second": round(speed["eager"], 3),
            "compiled_images_per_second": round(speed["compiled"], 3),
            "speedup": round(speed["compiled"] / speed["eager"], 4),
            "compile_warmup_seconds": round(warmup_seconds["compiled"] - warmup_seconds["eager"], 1),
        }

    # ---- what both need ------------------------------------------------------------------

    def model(self, mode: str, compile: bool | None = None) -> torch.nn.Module:
        from hydra.utils import instantiate

        from defectseg.models import FreezePolicy
        from defectseg.training.modules import prepare_network

        L.seed_everything(0, verbose=False)
        model = instantiate(self.cfg.model)
        FreezePolicy(MODES[mode]).apply(model)
        prepare_network(model, self.args.channels_last, self.args.compile if compile is None else compile)
        return model.to(self.device).train()

    def loss(self) -> torch.nn.Module:
        from defectseg.training.losses import BCEDiceLoss

        return BCEDiceLoss(float(self.cfg.task.bce_weight), float(self.cfg.task.dice_weight))

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and 0/1 masks, as the data module delivers them."""
        size, n = self.args.image_size, self.args.batch_size
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
        masks = (torch.rand(n, 1, size, size, generator=generator) > 0.9).to(torch.uint8)
        return images.to(self.device), masks.to(self.device)

    def encoder_file(self) -> Path:
        """A stage-1 encoder for the frozen mode (random weights: speed does not depend on them)."""
        from hydra.utils import instantiate

        from defectseg.models.encoder_io import save_encoder

        directory = self.workdir / "encoder"
        if not (directory / "encoder.json").exists():
            model = instantiate(self.cfg.model)
            save_encoder(
                model.encoder, directory, model.architecture, extra={"pretrain": {"dataset": "random (benchmark)"}}
            )
        return directory

    # ---- what the hardware does with it -------------------------------------------------

    def training_flops(self, mode: str) -> int:
        """FLOPs of one forward + backward (the optimiser's elementwise work is not counted)."""
        from defectseg.training.modules import images_to_float

        model, loss_fn = self.model(mode, compile=False), self.loss()
        images, masks = self.batch()
        with FlopCounterMode(display=False) as counter:
            with autocast_for(self.precision, self.device):
                loss = loss_fn(model(images_to_float(images, self.args.channels_last)), masks)
            loss.backward()
        return int(counter.get_total_flops())

    def inference(self) -> dict[str, float]:
        from defectseg.training.modules import images_to_float

        args = self.args
        model = self.model("scratch").eval()
        images, _ = self.batch()
        with torch.inference_mode(), autocast_for(self.precision, self.device):
            with FlopCounterMode(display=False) as counter:
                model(images_to_float(images, args.channels_last))
            for _ in range(args.warmup):
                model(images_to_float(images, args.channels_last))
            synchronize(self.device)
            reset_peak_memory(self.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                model(images_to_float(images, args.channels_last))
            synchronize(self.device)
            seconds = time.perf_counter() - start
        return {
            "images_per_second": args.steps * args.batch_size / seconds,
            "gflop_per_image": counter.get_total_flops() / args.batch_size / 1e9,
            "peak_memory_mib": peak_memory_mib(self.device),
        }

    def matmul_peak(self, dtype: torch.dtype) -> float:
        return matmul_peak(self.device, dtype, self.args.peak_size)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None) -> float:
    """GFLOP/s of the best of a few large square matmuls: what this device reaches at best."""
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(8 if device.type == "cuda" else 4):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if i:  # the first one warms up
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def alternate(repeats: int, *contenders: Callable[[], dict[str, float]]) -> tuple[list[dict[str, float]], ...]:
    """first, second, ..., first, second, ...: slow drifts of a shared machine hit every contender alike."""
    results: tuple[list[dict[str, float]], ...] = tuple([] for _ in contenders)
    for _ in range(repeats):
        for measured, contender in zip(results, contenders):
            measured.append(contender())
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_float32_matmul_precision("high")  # as the pipeline's Run does (TF32 on GPUs)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # as trainer.benchmark=true does
    bench = Bench(args)
    try:
        with ExitStack() as stack:
            return measure(bench, start_peers(bench, stack))
    finally:
        if bench._workdir is not None:
            shutil.rmtree(bench._workdir, ignore_errors=True)  # the pipeline runs' checkpoints


def start_peers(bench: Bench, stack: ExitStack) -> dict[str, Any]:
    """The Keras peers (own processes, warmed up), or why there are none; they mirror unet_paper from scratch."""
    from benchmarks import keras_peer

    args = bench.args
    if args.peer == "off" or "scratch" not in args.modes:
        return {}
    reason = None
    if not keras_peer.available():
        reason = keras_peer.INSTALL_HINT
    elif bench.cfg.model._target_.rsplit(".", 1)[-1] != "unet_paper":
        reason = "Keras peer skipped: it mirrors model=unet_paper only"
    if reason:
        print(f"[bench] {reason}", flush=True)
        return {"skipped": reason}
    peers = {}
    for name in args.peers:
        print(f"[bench] starting the Keras peer {name} (TensorFlow, own process)", flush=True)
        peer = stack.enter_context(
            keras_peer.KerasPeer(
                name, list(bench.cfg.model.channels), args.image_size, args.batch_size, torch.get_num_threads()
            )
        )
        peer.run(args.warmup)
        peers[name] = peer
    return peers


def peer_results(
    peers: dict[str, Any], measured: list[list[dict[str, float]]], precision: str, pipeline: float, bare: float
) -> dict[str, Any]:
    """Each peer's img/s and our pipeline and bare loop relative to the peer of the same precision."""
    out: dict[str, Any] = {}
    for (name, peer), runs in zip(peers.items(), measured):
        speed = median([r["images_per_second"] for r in runs])
        out[name] = {"images_per_second": [round(r["images_per_second"], 3) for r in runs], **peer.info}
        out[name]["pipeline_ratio"] = round(pipeline / speed, 4)
        out[name]["bare_ratio"] = round(bare / speed, 4)
    same = "keras_fp32" if precision == "32-true" else "keras_bf16"
    if same in out:
        out["same_precision_peer"] = same
    return out


def measure(bench: Bench, peers: dict[str, Any] | None = None) -> dict[str, Any]:
    from defectseg.training.runner import device_name

    args = bench.args
    load_start = [round(x, 2) for x in os.getloadavg()]
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(bench.precision)
    peaks = {"float32": bench.matmul_peak(torch.float32)}
    if half is not None:
        peaks[str(half).removeprefix("torch.")] = bench.matmul_peak(half)
    compute_peak = max(peaks.values()) if half is not None else peaks["float32"]

    results: dict[str, Any] = {}
    for mode in args.modes:
        flops = bench.training_flops(mode)
        racing = {
            name: (lambda peer=peer: {"images_per_second": peer.run(args.steps)})
            for name, peer in (peers or {}).items()
            if mode == "scratch" and name != "skipped"
        }
        bare, pipeline, *peer_runs = alternate(
            args.repeats, lambda mode=mode: bench.bare(mode), lambda mode=mode: bench.pipeline(mode), *racing.values()
        )
        bare_speed = median([r["images_per_second"] for r in bare])
        pipeline_speed = median([r["images_per_second"] for r in pipeline])
        gflops = flops / args.batch_size * pipeline_speed / 1e9
        results[mode] = {
            "freeze": MODES[mode],
            "bare_images_per_second": [round(r["images_per_second"], 3) for r in bare],
            "pipeline_images_per_second": [round(r["images_per_second"], 3) for r in pipeline],
            "ratio": round(pipeline_speed / bare_speed, 4),
            "train_gflop_per_step": round(flops / 1e9, 3),
            "pipeline_gflop_per_second": round(gflops, 2),
            "fraction_of_matmul_peak": round(gflops / compute_peak, 4),
            "peak_memory_mib": {
                "bare": round(max(r["peak_memory_mib"] for r in bare), 1),
                "pipeline": round(max(r["peak_memory_mib"] for r in pipeline), 1),
            },
        }
        print(
            f"[bench] {mode}: pipeline {pipeline_speed:.2f} img/s, bare {bare_speed:.2f} img/s, "
            f"ratio {results[mode]['ratio']:.3f}",
            flush=True,
        )
        if racing:
            results[mode]["peers"] = peer_results(
                {name: peers[name] for name in racing}, peer_runs, bench.precision, pipeline_speed, bare_speed
            )
            for name in racing:
                row = results[mode]["peers"][name]
                print(
                    f"[bench] {mode}: {name} {median(row['images_per_second']):.2f} img/s; "
                    f"pipeline / {name} {row['pipeline_ratio']:.3f}",
                    flush=True,
                )
        elif mode == "scratch" and peers and "skipped" in peers:
            results[mode]["peers"] = {"skipped": peers["skipped"]}
        if args.compile_ab:
            results[mode]["compile_ab"] = bench.compile_ab(mode)
            print(
                f"[bench] {mode}: torch.compile / eager on the bare step: {results[mode]['compile_ab']['speedup']:.3f}",
                flush=True,
            )
    inference = {key: round(value, 3) for key, value in bench.inference().items()}

    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": device_name("auto"),
        "cpu_isa": cpu_isa(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "torch": torch.__version__,
        "lightning": L.__version__,
        "model": bench.cfg.model._target_.rsplit(".", 1)[-1],
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": bench.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "pipeline_overrides": args.set,
        "num_workers": _resolved_workers(bench.cfg),
        "note": args.note,
        "matmul_peak_gflop_per_second": {k: round(v, 1) for k, v in peaks.items()},
        "memory_note": "CUDA: max allocated in the timed window"
        if bench.device.type == "cuda"
        else "CPU: process resident high-water mark (cumulative over the phases so far)",
        "training": results,
        "inference": inference,
    }


def _resolved_workers(cfg: Any) -> int:
    from defectseg.data.datamodules import resolve_num_workers

    return resolve_num_workers(cfg.dataset.num_workers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=256, help="square image side (the paper: 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100 if on_gpu else 20, help="timed training steps per measurement")
    parser.add_argument(
        "--warmup",
        type=int,
        default=10 if on_gpu else 3,
        help="steps run before the clock starts (compilation happens here)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="bare/pipeline pairs per mode, alternating; medians are reported"
    )
    parser.add_argument(
        "--modes",
        default="scratch,frozen",
        type=lambda s: [m for m in s.split(",") if m],
        help=f"comma-separated, of {sorted(MODES)}",
    )
    parser.add_argument(
        "--precision", default="auto", help="auto (the pipeline's default), bf16-mixed, 16-mixed or 32-true"
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in both contenders")
    parser.add_argument(
        "--compile-ab", action="store_true", help="also time eager against torch.compile on the bare step, interleaved"
    )
    parser.add_argument(
        "--peak-size", type=int, default=None, help="matmul side for the peak (default 8192 on GPU, 2048 on CPU)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override of the stage-2 config (repeatable); the bare loop takes model, optim, task from it",
    )
    parser.add_argument(
        "--peer",
        choices=["auto", "off"],
        default="auto",
        help="auto: also time the paper's framework (Keras/TensorFlow, if installed) in the scratch mode, interleaved",
    )
    parser.add_argument(
        "--peers",
        default="keras_bf16,keras_fp32",
        type=lambda s: [p for p in s.split(",") if p],
        help="which Keras peers: keras_bf16 (mixed_bfloat16), keras_fp32",
    )
    parser.add_argument("--note", default="", help="free text for the results line, e.g. 'quiet machine'")
    parser.add_argument(
        "--no-record", dest="record", action="store_false", help="print only; write no JSON and no results line"
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        parser.error(f"--modes: {unknown or 'none'} not among {sorted(MODES)}")
    if any(p not in ("keras_bf16", "keras_fp32") for p in args.peers):
        parser.error(f"--peers: {args.peers} not among keras_bf16, keras_fp32")
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.record:
        print(f"[bench] written {shown(record(result))} and a line in {shown(RESULTS_LOG)}")


if __name__ == "__main__":
    main()
