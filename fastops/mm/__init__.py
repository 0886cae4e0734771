"""OpenMMLab drop-ins; load with ``custom_imports=dict(imports=['fastops.mm'])``."""
from . import assigners  # noqa: F401
