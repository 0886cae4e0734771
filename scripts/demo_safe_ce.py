"""A few fp16 training steps whose logits overflow fp16, with mmdet's CrossEntropyLoss swapped for
fastops' SafeCrossEntropyLoss through one `type=` string. Prints the loss and the clamped count."""
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.registry import init_default_scope

LOSS_CFG = Config(dict(
    custom_imports=dict(imports=["fastops.mm"], allow_failed_imports=False),
    loss=dict(type="SafeCrossEntropyLoss", clamp=100.0),  # was: type="CrossEntropyLoss"
))


def main(steps=8, classes=81, batch=4096):
    from mmengine.utils import import_modules_from_strings
    from mmdet.registry import MODELS

    import_modules_from_strings(**LOSS_CFG.custom_imports)
    init_default_scope("mmdet")
    torch.manual_seed(0)
    hub = MessageHub.get_instance("safe_ce_demo")
    criterion = MODELS.build(LOSS_CFG.loss)
    stock = MODELS.build(dict(type="CrossEntropyLoss"))
    head = torch.nn.Linear(64, classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    features = torch.randn(batch, 64)
    labels = (features @ torch.randn(64, classes)).argmax(1)  # a learnable teacher
    for step in range(steps):
        # fp16 logits with a few activations past fp16's range, as an unscaled fp16 head produces.
        logits = head(features).half()
        logits = torch.where(torch.rand_like(logits, dtype=torch.float32) < 2e-4,
                             torch.full_like(logits, float("inf")), logits)
        loss = criterion(logits, labels)
        stock_loss = stock(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f} (stock mmdet CE: {stock_loss.item():.4f})  "
              f"num_clamped {int(hub.get_scalar('train/num_clamped').current())}")


if __name__ == "__main__":
    main()
