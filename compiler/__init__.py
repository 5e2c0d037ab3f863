"""intformer: compile Transformers from ONNX into integer-only TVM libraries.

The public Python API lives in :mod:`compiler.api`; the pipeline's stages in :mod:`compiler.pipeline`.
This package imports nothing heavy at import time, so that :mod:`compiler.runtime` can load a compiled
library with the TVM runtime alone.
"""

__version__ = "0.1.0"
