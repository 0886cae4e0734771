"""Python entry points of the fastops operators (autograd, fake tensors, argument docs)."""
from .mlecc_loss import *  # noqa: F401,F403
