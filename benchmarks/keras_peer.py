"""The paper's framework as a peer: the same U-Net trained by Keras / TensorFlow on the same CPU, in the same run.

The benchmark compares our pipeline with a bare PyTorch loop, which says nothing about whether
PyTorch itself is slow here; this peer does. It is the paper's architecture rebuilt in Keras
(32-64-128-256-512, two biased 3x3 conv + ReLU per level, 2x2 max-pool, nearest 2x upsampling,
concatenation, 1x1 sigmoid head: the same 7,846,657 parameters), trained with Adam on BCE + soft
Dice by ``train_on_batch`` on one resident batch, in ``mixed_bfloat16`` or ``float32``.

TensorFlow is an optional extra (``pip install -e '.[peer]'``), never a core dependency. It may also
live in a venv of its own (``PEER_PYTHON_ENV``=its python): installed next to defectseg, TensorBoard
imports it in every training run. The peer runs in its own process (``KerasPeer``), so its thread
pools and PyTorch's never compete for the cores, and the benchmark interleaves its timed chunks with PyTorch's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: environment variable naming a python that has TensorFlow (a separate venv), used instead of this one
PEER_PYTHON_ENV = "DEFECTSEG_PEER_PYTHON"
INSTALL_HINT = (
    "Keras/TensorFlow peer skipped: TensorFlow is not installed here; add it with `pip install -e '.[peer]'`, "
    f"or point {PEER_PYTHON_ENV} at the python of a venv with `pip install 'tensorflow-cpu>=2.16'`"
)
#: Keras policy per peer name
POLICIES = {"keras_bf16": "mixed_bfloat16", "keras_fp32": "float32"}


def peer_python() -> str | None:
    """The interpreter that runs the peer: $DEFECTSEG_PEER_PYTHON, else this one if it has TensorFlow."""
    other = os.environ.get(PEER_PYTHON_ENV)
    if other:
        return other if Path(other).is_file() else None
    return sys.executable if importlib.util.find_spec("tensorflow") is not None else None


def available() -> bool:
    return peer_python() is not None


def build_unet(channels: Sequence[int], image_size: int, in_channels: int = 3, num_classes: int = 1):
    """The paper's U-Net in Keras (functional API); the head stays float32 under mixed precision."""
    import keras
    from keras import layers

    def double_conv(x, width: int):
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
        return x

    inputs = keras.Input((image_size, image_size, in_channels))
    x, skips = inputs, []
    for index, width in enumerate(channels):
        if index:
            x = layers.MaxPooling2D(2)(x)
        x = double_conv(x, int(width))
        skips.append(x)
    for skip, width in zip(reversed(skips[:-1]), reversed(channels[:-1])):
        x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = double_conv(layers.Concatenate()([x, skip]), int(width))
    outputs = layers.Conv2D(num_classes, 1, activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def bce_dice_loss(target, probabilities):
    """BCE + soft Dice per image (smooth 1), as defectseg's BCEDiceLoss."""
    import tensorflow as tf

    bce = tf.reduce_mean(tf.keras.losses.binary_crossentropy(target, probabilities))
    flat_p = tf.reshape(probabilities, (tf.shape(probabilities)[0], -1))
    flat_t = tf.reshape(target, (tf.shape(target)[0], -1))
    intersection = tf.reduce_sum(flat_p * flat_t, axis=1)
    total = tf.reduce_sum(flat_p, axis=1) + tf.reduce_sum(flat_t, axis=1)
    return bce + tf.reduce_mean(1.0 - (2.0 * intersection + 1.0) / (total + 1.0))


def worker(args: argparse.Namespace) -> None:
    """Build the peer, then answer ``N`` on stdin with the seconds N train steps took (one JSON line each)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.mixed_precision.set_global_policy(POLICIES[args.peer])
    keras.utils.set_random_seed(0)
    model = build_unet(args.channels, args.image_size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_dice_loss)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size)
    images = tf.constant(rng.integers(0, 256, (*shape, 3)).astype("float32") / 255.0)
    masks = tf.constant((rng.random((*shape, 1)) > 0.9).astype("float32"))
    hello = {"parameters": int(model.count_params()), "tensorflow": tf.__version__, "keras": keras.__version__}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        steps = int(line)
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(images, masks)
        float(np.asarray(loss))  # the last step is finished
        print(json.dumps({"seconds": time.perf_counter() - start, "steps": steps}), flush=True)


class KerasPeer:
    """One peer in its own process; ``run(steps)`` returns images per second over ``steps`` train steps."""

    def __init__(
        self, peer: str, channels: Sequence[int], image_size: int, batch_size: int, threads: int | None = None
    ) -> None:
        if peer not in POLICIES:
            raise ValueError(f"unknown peer {peer!r}; one of {sorted(POLICIES)}")
        self.peer, self.batch_size = peer, int(batch_size)
        python = peer_python() or sys.executable
        command = [python, "-m", "benchmarks.keras_peer", "--peer", peer, "--image-size", str(image_size)]
        command += ["--batch-size", str(batch_size), "--channels", ",".join(str(int(c)) for c in channels)]
        command += ["--threads", str(threads or 0)]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the Keras peer ({self.peer}) exited with code {self.process.wait()}; see its stderr")
        return json.loads(line)

    def run(self, steps: int) -> float:
        self.process.stdin.write(f"{int(steps)}\n")
        answer = self._answer()
        return answer["steps"] * self.batch_size / answer["seconds"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)

    def __enter__(self) -> KerasPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Keras peer worker (started by benchmarks/throughput.py)")
    parser.add_argument("--peer", choices=sorted(POLICIES), required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")], default=[32, 64, 128, 256, 512])
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: its default)")
    worker(parser.parse_args(argv))


if __name__ == "__main__":
    main()
