"""An exported model in ONNX Runtime: numpy in, numpy out, no torch and no Lightning.

For machines that only run inspections: ``pip install onnxruntime numpy opencv-python-headless
pillow scikit-image`` and this package, then ``python -m defectseg.predict checkpoint=model.onnx``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from defectseg.inference.runtime import CLASS_FIELDS, ONNX_METADATA_KEY, ModelInfo
from defectseg.utils.errors import UserError


def onnx_providers(device: str = "auto") -> list[str]:
    """CUDA when asked for (or ``auto``) and this onnxruntime build has it; always the CPU as fallback."""
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider"] if device == "auto" or device.startswith("cuda") else []
    return [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]


class OnnxSegmenter:
    def __init__(self, path: str | Path, device: str = "auto") -> None:
        import onnxruntime as ort

        path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=onnx_providers(device))
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{path}: cannot load the ONNX model ({error})") from error
        metadata = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        stored = json.loads(metadata) if metadata else {}
        known = {
            k: stored[k]
            for k in (
                "threshold",
                "threshold_source",
                "tile_size",
                "multiple",
                "architecture",
                "input_scale",
                *CLASS_FIELDS,
            )
            if k in stored
        }
        self.info = ModelInfo(source=str(path), runtime="onnxruntime", **known)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]
