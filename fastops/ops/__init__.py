"""Python entry points of the fastops operators (autograd, fake tensors, argument docs)."""
