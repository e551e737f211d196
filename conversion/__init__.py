"""Model conversion and verification commands: predict, pth2onnx, onnx2om, verify."""
