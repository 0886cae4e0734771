"""Python entry points of the fastops operators (autograd, fake tensors, argument docs)."""
from .dynamic_soft_label_assign import dynamic_soft_label_assign  # noqa: F401
from .mlecc_loss import *  # noqa: F401,F403
from .safe_cross_entropy import safe_cross_entropy, safe_sigmoid_cross_entropy  # noqa: F401
from .simota_assign import simota_assign  # noqa: F401
