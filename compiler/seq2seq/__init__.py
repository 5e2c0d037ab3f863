"""Encoder-decoder (translation) models: the bundle format, importers, decoding.

- ``spec.py``: ``Seq2SeqSpec``, the frozen description of an encoder-decoder bundle (``seq2seq.json``): its two
  ONNX graphs, how the encoder's outputs and the decoder's recurrent state connect, the token ids and lengths.
- ``marian_bin.py``: Marian's binary model format (float32 and intgemm8 items) -> NumPy.
- ``marian.py``: ``import_marian``, a Bergamot/Marian tiny model (transformer encoder, SSRU decoder) -> bundle.
- ``onnx_build.py``: the small ONNX graph builder the importer uses.
- ``decode.py``: backend protocol, tokenization, long-line splitting, length-sorted batches, greedy/beam decoding.
- ``backends.py``: the onnxruntime backend of a bundle folder and ``BACKENDS``, how a path picks its backend.
"""
