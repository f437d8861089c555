"""Inference on new photos: tiled prediction, defect measurements, overlays, model runtimes.

Everything here but ``torch_runtime`` needs only numpy, OpenCV, Pillow and scikit-image, so
an exported ONNX model runs with ONNX Runtime without importing torch or Lightning.
"""
