"""Is tiled inference as fast as the network? Megapixels per second of predict's probability map on a large
photo, and the peak memory of a larger one, per runtime and tile layout.

    python benchmarks/predict_speed.py                        # 8 MP speed + 24 MP memory (make bench runs this)
    python benchmarks/predict_speed.py --layouts fitted --repeats 2   # one layout, twice
    python benchmarks/predict_speed.py --runtimes torch,torch-bf16,onnx      # PyTorch fp32 / bf16, ONNX Runtime

Each measurement runs in its own process (a fresh peak-memory high-water mark), with unet_paper (random weights:
speed and memory do not depend on them). Speed: a synthetic photo through ``probability_map`` as predict calls it:
tiling, the network, blending. Layouts: ``grid`` (predict's default: the 128 px training size, 25 % overlap, 8
tiles a pass) and ``fitted`` (tiles of up to 1024 px fitted to the photo, sharing 128 px). Runtimes: ``torch``
(TorchSegmenter, fp32, channels_last, inference_mode), ``torch-bf16`` (the same under bf16 autocast), ``onnx``
(the model exported as ``make export`` does, in ONNX Runtime).
One warm-up pass on one tile runs before the clock starts.

Memory is the whole ``python -m defectseg.predict`` command's resident high-water mark on a larger photo (a JPEG
of a grainy grey surface with dark lines), in the first layout given: reading the photo, the network, masks, defect
measurement, overlay and report.html, as a user runs it (``scale=1``: the photo at full size). Its network has
random weights, so the defects it finds (recorded) are not a trained model's; the arrays that scale with the photo
are the same. The PyTorch rows record the torch build and what ``import torch`` alone keeps resident (a CUDA build
~0.7 GB even on a CPU, the CPU build ~0.2 GB); ``--torch-python VENV/bin/python`` runs them in another environment,
e.g. one with the CPU build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.results_log import (  # noqa: E402
    append_result_line,
    cpu_isa,
    isa_text,
    median,
    shown,
    write_result,
)

LAYOUTS = {  # name -> probability_map keywords (tile_size None: the fitted layout's largest tile)
    "fitted": {"tile_size": None, "overlap": 0.25, "batch_size": 8, "margin": "default"},
    "grid": {"tile_size": 128, "overlap": 0.25, "batch_size": 8, "margin": None},
}
RUNTIMES = ("torch", "torch-bf16", "onnx")


def photo_shape(megapixels: float) -> tuple[int, int]:
    """A 3:2 photo of about this many megapixels (8 -> 3464 x 2309, like a 3456 x 2304 inspection photo)."""
    height = round((megapixels * 1e6 / 1.5) ** 0.5)
    return height, round(height * 1.5)


def rss_mib() -> float:
    """This process's resident high-water mark (VmHWM: ru_maxrss would carry the parent's over exec on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def segmenter(runtime: str, onnx_path: str | None, channels: list[int]) -> Any:
    """What predict would run: TorchSegmenter (optionally under bf16 autocast) or OnnxSegmenter."""
    if runtime == "onnx":
        from defectseg.inference.onnx_runtime import OnnxSegmenter

        return OnnxSegmenter(onnx_path, device="cpu")
    import torch

    from defectseg.inference.runtime import ModelInfo
    from defectseg.inference.torch_runtime import TorchSegmenter
    from defectseg.models.segmentation import unet_paper

    torch.manual_seed(0)
    model = unet_paper(channels=channels).eval()
    info = ModelInfo(source="benchmark", runtime="torch", multiple=model.encoder.reduction)
    return TorchSegmenter(model, info, device="cpu", precision="bf16" if runtime == "torch-bf16" else "32")


def synthetic_photo(height: int, width: int) -> np.ndarray:
    """A grey, grainy surface with a few dark crack-like lines (what the overlay and measurements then work on)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    photo = np.full((height, width, 3), 140, np.uint8)
    photo -= rng.integers(0, 24, (height, width, 1), dtype=np.uint8)
    for _ in range(12):
        points = rng.integers(0, (width, height), (6, 2)).astype(np.int32)
        cv2.polylines(photo, [points], False, (40, 40, 40), int(rng.integers(2, 9)))
    return photo


def torch_run_dir(directory: Path, channels: list[int]) -> str:
    """A stage-2 run directory as predict reads one (config.yaml + checkpoints/best.ckpt), random unet_paper weights."""
    import torch
    from omegaconf import OmegaConf

    from defectseg.models.segmentation import unet_paper

    torch.manual_seed(0)
    model = unet_paper(channels=channels).eval()
    (directory / "checkpoints").mkdir(parents=True)
    model_cfg = {"_target_": "defectseg.models.segmentation.unet_paper", "channels": list(channels)}
    OmegaConf.save({"model": model_cfg, "dataset": {"image_size": 128}}, directory / "config.yaml")
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"threshold": 0.5}}, directory / "checkpoints" / "best.ckpt")
    return str(directory / "checkpoints" / "best.ckpt")


#: ``python -m defectseg.predict ARGS`` that prints its resident high-water mark (``rss_mib``) to stderr as it exits
REPORT_PEAK_AT_EXIT = """
import atexit, runpy, sys
from benchmarks.predict_speed import rss_mib
atexit.register(lambda: print("PEAK_MIB", rss_mib(), file=sys.stderr))
sys.argv[0] = "defectseg.predict"
runpy.run_module("defectseg.predict", run_name="__main__")
"""


def command_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of the whole ``python -m defectseg.predict`` on one photo: reading it, the network, masks, defect
    measurement, overlay, report. The command reports its own VmHWM as it exits: ru_maxrss would carry this process's
    high-water mark (the photo, torch) over the exec."""
    import cv2

    from defectseg.inference.tiling import DEFAULT_MARGIN

    height, width = spec["shape"]
    with tempfile.TemporaryDirectory(prefix="defectseg_predict_memory_") as scratch:
        photo_path = Path(scratch) / "photo.jpg"
        cv2.imwrite(str(photo_path), synthetic_photo(height, width), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if spec["runtime"] == "onnx":
            checkpoint = spec["onnx_path"]
        else:
            checkpoint = torch_run_dir(Path(scratch) / "run", spec["channels"])
        layout = LAYOUTS[spec["layout"]]
        out = Path(scratch) / "predict"
        command = [
            spec.get("python") or sys.executable, "-c", REPORT_PEAK_AT_EXIT,
            f"input={photo_path}", f"checkpoint={checkpoint}",
            f"output_dir={out}", "scale=1", "progress=false", "device=cpu",
            f"precision={'bf16' if spec['runtime'] == 'torch-bf16' else '32'}",
            f"tiling.layout={'grid' if layout['margin'] is None else 'fitted'}",
            f"tiling.tile_size={layout['tile_size'] or 'null'}", f"tiling.overlap={layout['overlap']}",
            f"tiling.batch_size={layout['batch_size']}", f"tiling.margin={DEFAULT_MARGIN}",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        (image,) = json.loads((out / "predictions.json").read_text())["images"]
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_MIB ")]
    if not peaks:
        raise RuntimeError(f"{' '.join(command)} reported no peak memory:\n{done.stderr[-3000:]}")
    return {
        "peak_memory_mib": round(float(peaks[-1]), 1),
        "seconds": round(seconds, 1),
        "defects": image["defects"],
    }


def torch_footprint(python: str) -> dict[str, Any]:
    """Which torch build ``python`` has and what importing it alone keeps resident: the floor under every PyTorch
    predict (a CUDA build maps ~0.7 GB of libraries at import even on a CPU; the CPU build ~0.2 GB)."""
    probe = "import torch; from benchmarks.predict_speed import rss_mib; print(torch.__version__, rss_mib())"
    done = subprocess.run([python, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{python} cannot import torch:\n{done.stderr[-2000:]}")
    version, mib = done.stdout.split()[-2:]
    return {"python": python, "torch": version, "import_mib": round(float(mib), 1)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    if spec.get("command"):
        return command_peak(spec)
    import numpy as np

    from defectseg.inference import tiling

    layout = dict(LAYOUTS[spec["layout"]])
    layout["tile_size"] = layout["tile_size"] or tiling.MAX_TILE
    layout["margin"] = tiling.DEFAULT_MARGIN if layout["margin"] == "default" else layout["margin"]
    height, width = spec["shape"]
    photo = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    network = segmenter(spec["runtime"], spec.get("onnx_path"), spec["channels"])
    network(np.zeros((1, 3, 128, 128), np.float32))  # warm-up: primitive creation, thread pools
    in_network = {"seconds": 0.0, "pixels": 0}

    def run(images: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        probabilities = network(images)
        in_network["seconds"] += time.perf_counter() - start
        in_network["pixels"] += images.shape[0] * images.shape[2] * images.shape[3]
        return probabilities

    baseline = rss_mib()
    tiles: list[int] = []
    start = time.perf_counter()
    tiling.probability_map(photo, run, multiple=16, on_progress=lambda done, total: tiles.append(total), **layout)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "megapixels_per_second": round(height * width / 1e6 / seconds, 4),
        "tiles": tiles[-1],
        # pixels through the network per photo pixel (tile overlap and padding), the network's own speed on them,
        # and the share of the time spent outside it (cutting tiles, blending)
        "computed_per_photo_pixel": round(in_network["pixels"] / (height * width), 3),
        "network_megapixels_per_second": round(in_network["pixels"] / 1e6 / in_network["seconds"], 4),
        "outside_network": round(1.0 - in_network["seconds"] / seconds, 4),
        "peak_memory_mib": round(rss_mib(), 1),
        "added_memory_mib": round(rss_mib() - baseline, 1),
    }


def measure_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_model(directory: Path, channels: list[int]) -> str:
    """unet_paper exported to ONNX as `make export` does (dynamic batch and sides)."""
    import numpy as np
    import torch

    from defectseg.export import export_onnx
    from defectseg.inference.runtime import ModelInfo
    from defectseg.inference.torch_runtime import ProbabilityModel
    from defectseg.models.segmentation import unet_paper

    torch.manual_seed(0)
    model = unet_paper(channels=channels).eval()
    info = ModelInfo(source="benchmark", runtime="torch", multiple=model.encoder.reduction)
    path = directory / "model.onnx"
    export_onnx(ProbabilityModel(model).eval(), info, path, 18, np.zeros((1, 3, 64, 64), np.float32))
    return str(path)


def ceiling(channels: list[int], runtimes: list[str]) -> dict[str, Any]:
    """What this CPU allows at best: the network's GFLOP per megapixel over the matmul peak of each precision run.

    A fully convolutional network does the same work per pixel at any tile size, so no tiling, runtime or fusion
    beats peak / (GFLOP per MP): a goal above it needs faster arithmetic (bf16 on AVX-512 BF16 or AMX, a GPU) or
    less work per pixel (a smaller network, predicting at a coarser scale)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.throughput import matmul_peak
    from defectseg.models.segmentation import unet_paper

    model = unet_paper(channels=channels).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.rand(1, 3, 256, 256))
    gflop_per_mp = counter.get_total_flops() / (256 * 256) / 1e3
    peaks = {"float32": matmul_peak(torch.device("cpu"), torch.float32)}
    if "torch-bf16" in runtimes:
        peaks["bfloat16"] = matmul_peak(torch.device("cpu"), torch.bfloat16)
    return {
        "gflop_per_megapixel": round(gflop_per_mp, 1),
        "matmul_peak_gflop_per_second": {k: round(v, 1) for k, v in peaks.items()},
        "megapixels_per_second_at_peak": {k: round(v / gflop_per_mp, 3) for k, v in peaks.items()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_start = [round(x, 2) for x in os.getloadavg()]
    bound = ceiling(args.channels, args.runtimes)
    print(f"[predict-bench] ceiling: {bound}", flush=True)
    speed_shape, memory_shape = photo_shape(args.megapixels), photo_shape(args.memory_megapixels)
    with tempfile.TemporaryDirectory(prefix="defectseg_predict_bench_") as scratch:
        onnx_path = export_model(Path(scratch), args.channels) if "onnx" in args.runtimes else None
        base = {"onnx_path": onnx_path, "channels": args.channels}
        contenders = [(runtime, layout) for layout in args.layouts for runtime in args.runtimes]
        speed: dict[str, list[dict[str, Any]]] = {f"{r}/{lay}": [] for r, lay in contenders}
        for _ in range(args.repeats):  # interleaved: a drifting load hits every contender alike
            for runtime, layout in contenders:
                spec = {**base, "runtime": runtime, "layout": layout, "shape": speed_shape}
                speed[f"{runtime}/{layout}"].append(measure_in_child(spec))
                print(
                    f"[predict-bench] {runtime}/{layout} {speed_shape}: {speed[f'{runtime}/{layout}'][-1]}", flush=True
                )
        memory, footprint = {}, None
        if args.memory_megapixels > 0:
            torch_python = args.torch_python or sys.executable
            footprint = torch_footprint(torch_python)
            for runtime in args.runtimes:
                spec = {**base, "runtime": runtime, "layout": args.layouts[0], "shape": memory_shape, "command": True}
                if runtime.startswith("torch"):
                    spec["python"] = torch_python
                memory[f"{runtime}/{args.layouts[0]}"] = measure_in_child(spec)
                print(f"[predict-bench] memory {runtime} {memory_shape}: {memory[f'{runtime}/{args.layouts[0]}']}")
    from defectseg.training.runner import device_name

    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": device_name("cpu"),
        "cpu_isa": cpu_isa(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "model": "unet_paper",
        "channels": args.channels,
        "speed_photo": list(speed_shape),
        "memory_photo": list(memory_shape),
        "repeats": args.repeats,
        "layouts": {name: LAYOUTS[name] for name in args.layouts},
        "note": args.note,
        "speed": speed,
        "speed_megapixels_per_second": {
            name: round(median([r["megapixels_per_second"] for r in runs]), 4) for name, runs in speed.items()
        },
        "memory": memory,
        "memory_torch": footprint,
        "ceiling": bound,
    }


def record(result: dict[str, Any]) -> Path:
    path = write_result("predict", result)
    h, w = result["speed_photo"]
    speeds = ", ".join(f"{name} **{mps:.2f}**" for name, mps in result["speed_megapixels_per_second"].items())
    memory = ", ".join(
        f"{name} {r['peak_memory_mib']:.0f} MiB ({r['seconds']:.0f} s, {r['defects']} defects)"
        for name, r in result["memory"].items()
    )
    mh, mw = result["memory_photo"]
    load = result["load_average"]
    bound = result["ceiling"]
    fp32_peak = bound["matmul_peak_gflop_per_second"]["float32"]
    inside = ", ".join(
        f"{name} {median([r['network_megapixels_per_second'] for r in runs]):.2f} MP/s on "
        f"{median([r['computed_per_photo_pixel'] for r in runs]):.2f}x the photo's pixels, "
        f"{100 * median([r['outside_network'] for r in runs]):.1f} % outside it"
        for name, runs in result["speed"].items()
    )
    limits = (
        f" · the network: {bound['gflop_per_megapixel']:.0f} GFLOP/MP, so this CPU's fp32 matmul peak "
        f"({fp32_peak:.0f} GFLOP/s) allows at most {bound['megapixels_per_second_at_peak']['float32']:.2f} MP/s; "
        f"inside the tiles: {inside}"
    )
    line = (
        f"- {result['date'][:16].replace('T', ' ')} · {result['machine']} · {isa_text(result['cpu_isa'])} · "
        f"load {load['start'][0]:.1f}->{load['end'][0]:.1f} · tiled predict (probability map), unet_paper, "
        f"{w}x{h} photo, MP/s: {speeds} (x {result['repeats']})"
        + limits
        + (f" · peak memory of the whole predict command, {mw}x{mh} photo: {memory}" if memory else "")
        + (torch_text(result.get("memory_torch")) if memory else "")
        + (f" · {result['note']}" if result["note"] else "")
        + f" · `{shown(path)}`"
    )
    append_result_line(line)
    return path


def torch_text(footprint: dict[str, Any] | None) -> str:
    if not footprint:
        return ""
    torch_alone = f"{footprint['import_mib']:.0f} MiB resident after `import torch` alone"
    return f" (PyTorch rows: torch {footprint['torch']}, {torch_alone})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megapixels", type=float, default=8.0, help="photo size for the speed")
    parser.add_argument("--memory-megapixels", type=float, default=24.0, help="photo size for peak memory (0: skip)")
    listed = lambda s: [x for x in s.split(",") if x]
    parser.add_argument("--runtimes", type=listed, default=["torch", "onnx"], help=f"of {', '.join(RUNTIMES)}")
    parser.add_argument("--layouts", type=listed, default=["grid", "fitted"], help=f"of {', '.join(LAYOUTS)}")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")], default=[32, 64, 128, 256, 512])
    parser.add_argument(
        "--torch-python",
        help="interpreter for the PyTorch memory commands (e.g. a venv with the CPU build of torch); default: this one",
    )
    parser.add_argument("--note", default="", help="free text for the results line")
    parser.add_argument("--no-record", dest="record", action="store_false", help="print only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None:
        if [r for r in args.runtimes if r not in RUNTIMES] or [lay for lay in args.layouts if lay not in LAYOUTS]:
            parser.error(f"--runtimes of {RUNTIMES}, --layouts of {tuple(LAYOUTS)}")
        if args.repeats < 1 or args.megapixels <= 0:
            parser.error("--repeats and --megapixels must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.record:
        print(f"[predict-bench] written {shown(record(result))}")


if __name__ == "__main__":
    main()
