"""Loss and accuracy of a model over a held-out split during training (validation
after every epoch, the test split once at the end), summed over DDP ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from duet.data import augment
from duet.data.contract import Loader
from duet.data.preprocess import PreprocessSpec
from duet.training import distributed
from duet.training.precision import FP32, Precision, autocast


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: Loader,
    spec: PreprocessSpec,
    device: torch.device,
    d: distributed.Dist = distributed.Dist(),
    precision: Precision = FP32,
) -> dict[str, float]:
    """Loss and accuracy over the rank's share of the validation split, summed over ranks."""
    was_training = model.training
    model.eval()
    loader.set_epoch(0)
    total_loss, correct, n = 0.0, 0.0, 0.0
    for batch in loader:
        ok = batch.labels >= 0
        if not bool(ok.any()):
            continue
        x = augment.eval_batch(batch.images[ok], spec)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits = model(x)
        y = batch.labels[ok]
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += int(y.numel())
    total_loss, correct, n = distributed.all_reduce_sum(d, [total_loss, correct, n], device)
    model.train(was_training)
    return {"val_loss": total_loss / max(n, 1), "val_accuracy": correct / max(n, 1), "val_images": int(n)}


def validate_empty(d: distributed.Dist, device: torch.device) -> dict[str, float]:
    """A rank with no validation images still joins the reduction."""
    total_loss, correct, n = distributed.all_reduce_sum(d, [0.0, 0.0, 0.0], device)
    return {"val_loss": total_loss / max(n, 1), "val_accuracy": correct / max(n, 1), "val_images": int(n)}
