"""Training and evaluation of the spam model (needs the `train` extra: scikit-learn, skl2onnx, onnx)."""
