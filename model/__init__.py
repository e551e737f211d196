"""Faster R-CNN R50-FPN-DCN inference (mmdetection v2.8 semantics) and its pre/post-processing."""
