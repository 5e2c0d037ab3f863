"""Calibration: observe activation ranges of the fp32 model and turn them into int8 parameters."""
