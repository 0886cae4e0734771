"""Python entry points of the fastops operators (autograd, fake tensors, argument docs)."""
from .simota_assign import simota_assign  # noqa: F401
