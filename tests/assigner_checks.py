"""Exact comparisons of the fused assigners with the stock ones: the stock tie rule made fastops',
and a spy on both heads' assignments."""
import contextlib

import torch


@contextlib.contextmanager
def lower_index_ties(monkeypatch, assigner_module):
    """Makes the stock assigner of `assigner_module` (mmdet's sim_ota_assigner or
    dynamic_soft_label_assigner) break ties among a gt's cheapest priors (its 1-D ``torch.topk``
    calls; the 2-D call only sums the largest IoUs) towards the lower prior index, as fastops does;
    stock leaves that order unspecified. Yields counts of the calls where tied costs straddled the
    top-k boundary (``tied``) and where that changed the selected priors (``changed``)."""
    counts = dict(tied=0, changed=0)

    class TorchWithLowerIndexTies:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def topk(values, k, dim=-1, largest=True, sorted=True):
            stock = torch.topk(values, int(k), dim=dim, largest=largest)
            if values.dim() != 1:
                return stock
            ranked = torch.sort(values, descending=largest, stable=True)
            top = ranked.values[:int(k)], ranked.indices[:int(k)]
            assert torch.equal(stock.values, top[0])  # the same values: only the order among ties differs
            counts['tied'] += int(k) < len(values) and bool(ranked.values[int(k) - 1] == ranked.values[int(k)])
            counts['changed'] += not torch.equal(stock.indices.sort().values, top[1].sort().values)
            return top

    with monkeypatch.context() as patch:
        patch.setattr(assigner_module, 'torch', TorchWithLowerIndexTies())
        yield counts


class AssignmentSpy:
    """Records the stock head's per-image ``assign`` calls (pred_instances, gt_instances, result) and
    the fastops head's ``assign_batch`` results."""

    def __init__(self, monkeypatch, stock, fast):
        self.stock_calls, self.fast_batches = [], []
        stock_assign, fast_assign_batch = stock.assigner.assign, fast.assigner.assign_batch

        def assign(pred_instances, gt_instances, *args, **kwargs):
            result = stock_assign(pred_instances, gt_instances, *args, **kwargs)
            self.stock_calls.append((pred_instances, gt_instances, result))
            return result

        def assign_batch(*args):
            result = fast_assign_batch(*args)
            self.fast_batches.append(result)
            return result

        monkeypatch.setattr(stock.assigner, 'assign', assign)
        monkeypatch.setattr(fast.assigner, 'assign_batch', assign_batch)

    @property
    def stock_results(self):
        return [result for _, _, result in self.stock_calls]
