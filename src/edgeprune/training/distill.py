"""Knowledge distillation for fine-tuning a pruned model: the dense model is the teacher.

Hinton et al.'s loss: `(1 - weight) * CE(student, labels) + weight * T^2 * KL(p_teacher || p_student)`
with both distributions softened by temperature `T` (the T^2 keeps the soft term's gradients
on the scale of the hard one). The teacher runs once per batch in eval mode without gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeprune.errors import InputError


@dataclass(frozen=True)
class Distillation:
    """A teacher and how much its softened logits count against the labels."""

    teacher: nn.Module
    temperature: float = 4.0
    weight: float = 0.5

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InputError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.weight <= 1.0:
            raise InputError(f"distillation weight must be in [0, 1], got {self.weight}")

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            return self.teacher(images).float()
        finally:
            self.teacher.train(was_training)

    def loss(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
             label_smoothing: float = 0.0) -> Tensor:
        return distillation_loss(student_logits, teacher_logits, labels, self.temperature, self.weight,
                                 label_smoothing)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
                      weight: float, label_smoothing: float = 0.0) -> Tensor:
    """The mean over the batch of the loss in the module docstring."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if weight == 0.0:
        return hard
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2
    return (1.0 - weight) * hard + weight * soft
