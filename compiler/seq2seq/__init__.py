"""Encoder-decoder (translation) models: the bundle format, importers, decoding.

- ``spec.py``: ``Seq2SeqSpec``, the frozen description of an encoder-decoder bundle (``seq2seq.json``): its two
  ONNX graphs, how the encoder's outputs and the decoder's recurrent state connect, the token ids and lengths.
"""
