"""Weight converters from other CBAM implementations to minicbam's state-dict layout.

Each converter takes and returns a flat ``dict[str, numpy.ndarray]`` (load the file first with
``minicbam.load``), works on a single attention module's dict or a whole ResNet's, strips a
``module.`` (DataParallel) prefix, and raises ``KeyError`` listing keys it does not know.
Arrays that need no change are shared with the input, not copied.

* ``from_official`` / ``to_official``: Jongchan/attention-module (the CBAM paper's code).
* ``from_timm`` / ``to_timm``: timm's ``CbamModule`` and ``SEModule``.
"""

from minicbam.io.interop.official import from_official, to_official
from minicbam.io.interop.timm import from_timm, to_timm

__all__ = ["from_official", "from_timm", "to_official", "to_timm"]
