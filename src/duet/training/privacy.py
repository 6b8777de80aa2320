"""Differentially private training: DP-SGD on Opacus (``duet train --dp-epsilon 8``; the ``dp`` extra).

DP-SGD bounds what the weights can reveal about any one training image: every
step clips each image's gradient to norm C (``max_grad_norm``) and adds
Gaussian noise of standard deviation ``noise_multiplier * C`` to their sum; an
accountant (Rényi DP, Opacus' ``RDPAccountant``) turns the steps taken into
the (ε, δ) spent. duet calibrates the noise before the first step so that the
planned epochs spend exactly the target ε, and reports the ε spent after each
epoch.

What duet does so the guarantee holds (each decision also in docs/privacy.md):

- batches are Poisson-sampled (``duet.data.contract.poisson_plan``): every
  image joins each step with probability q = batch_size / n, independently,
  which is what the accountant assumes (fixed shuffled batches are not);
- BatchNorm mixes the images of a batch: the model is built with GroupNorm
  instead (``duet.training.models.batchnorm_to_groupnorm``, recorded as
  ``norm: group``), and a model with other non-private layers is refused;
- refused, because they use other images or non-private statistics of the
  training data: mixup/cutmix, ``class_weights: on`` (``auto`` is off under
  DP: counting classes reads the data),
  ``grad_clip`` (per-sample clipping replaces it), bf16 (per-sample gradients
  stay fp32), several processes (torchrun), and the finetune recipe's frozen
  first epochs (set ``freeze_epochs: 0``). EMA stays allowed: averaging the
  private weights is post-processing, which costs no privacy;
- a step whose Poisson batch is empty is skipped but still counted by the
  accountant (conservative: the ε reported can only be above the true one);
- ``--resume`` restores the accountant's history, so a resumed run reports
  the ε an uninterrupted one would; training past the planned epochs is
  refused (it would spend more than the budget).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from duet.errors import ConfigError, ModelError
from duet.training.config import DPConfig, TrainConfig

ACCOUNTANT = "rdp"


def default_delta(n_train: int) -> float:
    """δ below 1/n, the usual requirement (δ is the chance the ε bound fails)."""
    return min(1e-5, 0.1 / max(n_train, 1))


def refusals(config: TrainConfig, world: int = 1) -> list[str]:
    """Settings that would break the DP guarantee, each as the fix to make."""
    out = []
    if config.mixup > 0 or config.cutmix > 0:
        out.append("mixup/cutmix mix images of a batch: set mixup: 0 and cutmix: 0")
    if config.class_weights == "on":
        out.append("class weights are counted from the data: set class_weights: off (or auto)")
    if config.grad_clip > 0:
        out.append("per-sample clipping (dp.max_grad_norm) replaces grad_clip: set grad_clip: 0")
    if config.precision == "bf16":
        out.append("per-sample gradients are computed in fp32: set precision: fp32 (or auto)")
    if world > 1:
        out.append("several processes (torchrun) are not supported with DP-SGD: train with one")
    finetune = config.recipe == "finetune" or (config.recipe == "auto" and config.weights != "none")
    if finetune and config.freeze_epochs > 0:
        out.append("the finetune recipe freezes the backbone first: set freeze_epochs: 0")
    return out


def check(config: TrainConfig, world: int = 1) -> None:
    """Raise ConfigError (one line) when the run asks for DP with settings that break it."""
    if config.dp is None:
        return
    try:
        import opacus  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError(
            "--dp-epsilon needs Opacus ('opacus' is not installed; this install of duet left it out): "
            "pip install 'duet[dp]'"
        ) from None
    problems = refusals(config, world)
    if problems:
        raise ConfigError("differentially private training refuses: " + "; ".join(problems))


@dataclass
class Private:
    """The Opacus pieces of one run and what they have spent."""

    # Per-sample gradients from PyTorch's ExpandedWeights (Opacus' "ew" mode): no module
    # hooks, so residual blocks that add in place (timm's `x += shortcut`) work, which
    # Opacus' default hook mode refuses ("a view ... is being modified inplace").
    module: torch.nn.Module
    optimizer: Any  # DPOptimizer around the run's AdamW (clip, noise, then AdamW's step)
    accountant: Any  # RDPAccountant: the steps taken, (noise, q, steps) each
    noise_multiplier: float
    sample_rate: float
    delta: float
    target_epsilon: float
    max_grad_norm: float
    planned_steps: int

    def epsilon(self) -> float:
        """The ε spent so far (at ``delta``)."""
        if not self.accountant.history:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(self.accountant.get_epsilon(delta=self.delta))

    def count_empty_steps(self, count: int) -> None:
        """Empty Poisson steps were skipped; the accountant counts them anyway (conservative)."""
        for _ in range(count):
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.accountant.history]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.accountant.history = [tuple(h) for h in saved.get("history", [])]

    def record(self) -> dict[str, Any]:
        """run.json / model.json's ``privacy``: what was promised and what was spent."""
        return {
            "mechanism": "DP-SGD (Opacus), Poisson sampling, per-sample clipping, Gaussian noise",
            "accountant": ACCOUNTANT,
            "epsilon": round(self.epsilon(), 4),
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "noise_multiplier": round(self.noise_multiplier, 6),
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": round(self.sample_rate, 6),
            "steps": int(sum(h[2] for h in self.accountant.history)),
            "planned_steps": self.planned_steps,
        }


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dp: DPConfig,
    *,
    n_train: int,
    batch_size: int,
    planned_steps: int,
) -> Private:
    """Wrap ``model`` and ``optimizer`` for DP-SGD with noise calibrated so that
    ``planned_steps`` Poisson steps at rate ``batch_size / n_train`` spend ``dp.epsilon``."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ModelError(f"this model cannot train with DP-SGD: {str(problems[0]).splitlines()[0]}")
    sample_rate = min(1.0, batch_size / max(n_train, 1))
    delta = dp.delta if dp.delta is not None else default_delta(n_train)
    if delta >= 1.0 / max(n_train, 1):
        raise ConfigError(f"dp.delta must be below 1/n = {1.0 / n_train:.2g} (the training images); got {delta:g}")
    with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound, said in docs/privacy.md
        warnings.simplefilter("ignore", UserWarning)
        noise = get_noise_multiplier(
            target_epsilon=dp.epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=planned_steps,
            accountant=ACCOUNTANT,
        )
    accountant = RDPAccountant()
    dp_optimizer = DPOptimizer(
        optimizer, noise_multiplier=noise, max_grad_norm=dp.max_grad_norm, expected_batch_size=batch_size
    )
    dp_optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return Private(
        module=GradSampleModuleExpandedWeights(model),
        optimizer=dp_optimizer,
        accountant=accountant,
        noise_multiplier=float(noise),
        sample_rate=sample_rate,
        delta=delta,
        target_epsilon=dp.epsilon,
        max_grad_norm=dp.max_grad_norm,
        planned_steps=planned_steps,
    )
