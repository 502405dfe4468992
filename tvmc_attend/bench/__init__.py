"""Timing: compiled models side by side with ONNX Runtime and PyTorch, checked, interleaved.

``variants`` are the timed things and the one way they are timed; ``benchmark`` (one model,
tuned vs untuned vs baselines), ``op_benchmark`` (the fused DC-AC operator vs stock fusion) and
``compare`` (AttendNeXt vs its peers) build on it; ``report`` writes their run information,
JSON and plots.
"""
