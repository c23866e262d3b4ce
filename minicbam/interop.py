"""Weight converters from other CBAM implementations (public name; the code lives in
``minicbam/io/interop/``): ``from_official``/``to_official`` for the CBAM paper's code,
``from_timm``/``to_timm`` for timm's ``CbamModule`` and ``SEModule``."""

from minicbam.io.interop import from_official, from_timm, to_official, to_timm

__all__ = ["from_official", "from_timm", "to_official", "to_timm"]
