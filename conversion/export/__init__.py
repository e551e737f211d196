"""Export of the torch Detector to ONNX: symbolics, export-mode substitutions, the Ascend graph and its lowering.

The Detector itself is never edited: `exporter.export_onnx` swaps a few of its data-dependent steps
(NMS, multi-level RoIAlign) for graph-friendly equivalents while tracing, per target.
"""
