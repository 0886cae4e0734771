"""OpenMMLab drop-ins, registered into the mmdet / mmpose registries on import.

Load from a config with ``custom_imports = dict(imports=['fastops.mm'], allow_failed_imports=False)``.
"""
from . import assigners, heads, losses  # noqa: F401
from . import yolox_head  # noqa: F401
from . import rtmdet_head  # noqa: F401
