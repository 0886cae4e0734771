"""CUDA-graph capture of a step (shared by tests/test_cuda_parity.py and scripts/gpu_check/cuda_bench.py)."""
import torch


def capture(step, warmup: int = 3):
    """Runs `step` `warmup` times on a side stream (as capture requires), then captures one call.

    Returns (graph, outputs of the captured call): `graph.replay()` reruns the step on whatever the
    step's input tensors hold then and rewrites those outputs in place. A step that back-propagates
    should set its leaves' `.grad` to None first, so that the gradients are allocated (and then
    rewritten) inside the graph rather than accumulated."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs
