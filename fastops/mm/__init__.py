"""OpenMMLab drop-ins; load them from a config with ``custom_imports=dict(imports=['fastops.mm'])``."""
from . import losses  # noqa: F401
