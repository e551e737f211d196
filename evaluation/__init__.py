"""Pure functions on COCO results: box AP with COCOeval, and detection matching between two models."""
