"""MLECC inputs with invalid rows, shared by the CUDA tests and scripts/gpu_check/sanitizer_cases.py
(random RTMO-shaped inputs: fastops.reference.mlecc_loss.random_rtmo_case)."""
import torch


def with_invalid_rows(case):
    """A copy of a random_rtmo_case (N >= 4, K >= 3) with a non-finite input in rows (0, 0), (0, 1),
    (1, 0) and (1, 2), a negative area for instance 2 and a non-finite box for instance 3; and the
    [N, K] mask of the (instance, keypoint) rows that makes invalid."""
    case = {name: t.clone() for name, t in case.items()}
    case['logits_x'][0, 0, 0] = float('nan')
    case['logits_y'][0, 1, -1] = float('inf')
    case['sigmas'][1, 0] = float('inf')
    case['keypoints'][1, 2, 1] = float('nan')
    case['areas'][2] = -1.0
    case['bbox_cs'][3, 2] = -float('inf')
    invalid = torch.zeros(case['sigmas'].shape, dtype=torch.bool)
    invalid[0, :2] = invalid[1, 0] = invalid[1, 2] = invalid[2:4] = True
    return case, invalid
