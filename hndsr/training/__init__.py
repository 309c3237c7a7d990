"""Training: data, the three-phase trainer, prior distillation, the adversarial UNet fine-tune."""
