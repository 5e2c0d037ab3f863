"""ONNX front end: load and validate a model, pin its shapes, simplify it, check op support."""
