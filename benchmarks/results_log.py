"""Where benchmark results go: one JSON per run in benchmarks/results/, one line per run in results.md.

Every result names its machine and the CPU's ISA (AMX, AVX-512 BF16, ...), so figures from two
machines are never read as if they were comparable.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULTS_LOG = REPO / "benchmarks" / "results.md"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def cpu_isa() -> dict[str, Any]:
    """The CPU model and the ISA that decides its bf16 speed: results of two CPUs compare only alongside these."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags,
    }


def isa_text(isa: dict[str, Any]) -> str:
    """`AMD EPYC [AMX no, AVX-512 BF16 yes, AVX-512 yes, AVX2 yes]`"""
    names = {"amx": "AMX", "avx512_bf16": "AVX-512 BF16", "avx512": "AVX-512", "avx2": "AVX2"}
    return f"{isa['cpu']} [" + ", ".join(f"{name} {'yes' if isa[key] else 'no'}" for key, name in names.items()) + "]"


def write_result(kind: str, result: dict[str, Any]) -> Path:
    """benchmarks/results/<kind>_<date>_<device>.json, named by the machine it ran on."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", result["machine"].split("(")[0]).strip("-").lower()
    path = RESULTS_DIR / f"{kind}_{result['date'].replace(':', '-')}_{slug}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def shown(path: Path) -> str:
    """Paths in results.md relative to the repository, so the file reads the same in every clone."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def append_result_line(line: str) -> None:
    if not RESULTS_LOG.exists():
        RESULTS_LOG.write_text(
            "# Benchmark results\n\nOne line per run of `benchmarks/throughput.py` (`make bench`), "
            "`benchmarks/predict_speed.py` or `benchmarks/precision_dice.py`, naming the machine; "
            "the JSON named at the end of each line holds everything. See docs/speed.md.\n\n"
        )
    with RESULTS_LOG.open("a") as handle:
        handle.write(line.rstrip("\n") + "\n")


def peers_text(peers: dict[str, Any] | None) -> str:
    """`, keras_bf16 (TF 2.21.0) 12.36 img/s: pipeline **0.69x**, bare 0.72x` per peer, or why there is none."""
    if not peers:
        return ""
    if "skipped" in peers:
        return f" ({peers['skipped']})"
    parts = []
    for name, peer in peers.items():
        if name.startswith("keras_"):
            speed = median(peer["images_per_second"])
            parts.append(
                f", {name} (TF {peer['tensorflow']}) {speed:.2f} img/s: "
                f"pipeline **{peer['pipeline_ratio']:.2f}x**, bare {peer['bare_ratio']:.2f}x"
            )
    return "".join(parts)


def mode_text(mode: str, r: dict[str, Any]) -> str:
    pipeline, bare = median(r["pipeline_images_per_second"]), median(r["bare_images_per_second"])
    text = (
        f"{mode}: pipeline {pipeline:.2f} / bare {bare:.2f} img/s = **{r['ratio']:.3f}**, "
        f"{r['pipeline_gflop_per_second']:.0f} GFLOP/s ({100 * r['fraction_of_matmul_peak']:.0f} % of matmul peak), "
        f"peak mem {r['peak_memory_mib']['pipeline']:.0f} MiB"
    )
    if "compile_ab" in r:
        text += f", compiled/eager bare step {r['compile_ab']['speedup']:.3f}"
    return text + peers_text(r.get("peers"))


def setup_text(result: dict[str, Any]) -> str:
    """`unet_paper 256 px batch 8 bf16-mixed channels_last, 20 steps x 1`"""
    text = f"{result['model']} {result['image_size']} px batch {result['batch_size']} {result['precision']}"
    text += " channels_last" if result["channels_last"] else ""
    text += " compiled" if result["compile"] else ""
    text += f", {result['timed_steps']} steps x {result['repeats']}"
    if result["pipeline_overrides"]:
        text += " · " + " ".join(result["pipeline_overrides"])
    return text


def machine_text(result: dict[str, Any]) -> str:
    """`date · machine · CPU [ISA] · load a->b`: what a figure needs beside it to be read at all."""
    load = result["load_average"]
    return (
        f"{result['date'][:16].replace('T', ' ')} · {result['machine']} · {isa_text(result['cpu_isa'])} · "
        f"load {load['start'][0]:.1f}->{load['end'][0]:.1f}"
    )


def record(result: dict[str, Any]) -> Path:
    """JSON with everything, and one line in results.md naming the machine."""
    path = write_result("throughput", result)
    modes = "; ".join(mode_text(mode, r) for mode, r in result["training"].items())
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result["matmul_peak_gflop_per_second"].items())
    note = f" · {result['note']}" if result["note"] else ""
    line = (
        f"- {machine_text(result)} · {setup_text(result)} · {modes} · "
        f"inference {result['inference']['images_per_second']:.1f} img/s · matmul peak GFLOP/s: {peaks}{note} · "
        f"`{shown(path)}`"
    )
    append_result_line(line)
    return path
