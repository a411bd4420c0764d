"""GAN, feature-matching and KL losses of RVC/VITS training (LSGAN objectives).

Every loss is computed in float32 even under autocast, as RVC does.
"""

from __future__ import annotations

import torch


def discriminator_loss(
    real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]
) -> tuple[torch.Tensor, list[float], list[float]]:
    """LSGAN: push real scores to 1 and generated scores to 0, summed over sub-discriminators."""
    total = torch.zeros((), device=real_logits[0].device)
    real_losses: list[float] = []
    fake_losses: list[float] = []
    for real, fake in zip(real_logits, fake_logits, strict=True):
        real_loss = torch.mean((1 - real.float()) ** 2)
        fake_loss = torch.mean(fake.float() ** 2)
        total = total + real_loss + fake_loss
        real_losses.append(real_loss.item())
        fake_losses.append(fake_loss.item())
    return total, real_losses, fake_losses


def generator_loss(fake_logits: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN: push the discriminators' scores of generated audio to 1."""
    losses = [torch.mean((1 - fake.float()) ** 2) for fake in fake_logits]
    return torch.stack(losses).sum(), losses


def feature_loss(
    real_maps: list[list[torch.Tensor]], fake_maps: list[list[torch.Tensor]]
) -> torch.Tensor:
    """L1 between discriminator activations on real and generated audio (×2, as HiFi-GAN)."""
    total = torch.zeros((), device=real_maps[0][0].device)
    for real_layers, fake_layers in zip(real_maps, fake_maps, strict=True):
        for real, fake in zip(real_layers, fake_layers, strict=True):
            total = total + torch.mean(torch.abs(real.float().detach() - fake.float()))
    return total * 2


def kl_loss(
    z_p: torch.Tensor,
    logs_q: torch.Tensor,
    m_p: torch.Tensor,
    logs_p: torch.Tensor,
    z_mask: torch.Tensor,
) -> torch.Tensor:
    """KL(q || p) estimated at the flowed posterior sample ``z_p``, averaged over valid frames."""
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)
