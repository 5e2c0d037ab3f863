"""Decoder-only language models (LLaMA family): weights, the fp32 and integer NumPy references, calibration and
the perplexity protocol (issue 15)."""
