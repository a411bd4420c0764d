"""The one place that turns ``SINGTOME_DEVICE`` into a torch device.

``auto`` is CUDA when torch sees a usable GPU, else the CPU, and whoever calls it logs which;
``cuda`` / ``cuda:N`` without a usable GPU is an error (:class:`DeviceUnavailable`), never a silent
fall back to the CPU; ``cpu`` is the CPU. torch is imported only when a device is asked for, so the
runtime modules that import this one stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class DeviceUnavailable(RuntimeError):
    """The configured device cannot be used on this machine."""


def resolve_device(name: str, *, probe: bool = False) -> torch.device:
    """``'auto'`` → CUDA when usable, else CPU; ``'cuda[:N]'`` → that GPU or DeviceUnavailable.

    With ``probe`` a GPU is also asked to hold one tensor, which catches a driver or a torch
    build that lists the GPU but cannot run on it (done once, when a worker starts).
    """
    import torch

    wanted = (name or "auto").strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
            try:
                _check_cuda(device, probe)
                return device
            except DeviceUnavailable:
                return torch.device("cpu")
        return torch.device("cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError as exc:
        raise DeviceUnavailable(
            f"SINGTOME_DEVICE={name!r} is not a device: use auto, cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda":
        _check_cuda(device, probe)
    elif device.type != "cpu":
        raise DeviceUnavailable(
            f"SINGTOME_DEVICE={name!r}: only auto, cpu, cuda and cuda:N are supported"
        )
    return device


def _check_cuda(device: torch.device, probe: bool) -> None:
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = (
            f"this torch build ({torch.__version__}) has no CUDA support"
            if build is None
            else f"torch {torch.__version__} (CUDA {build}) sees no GPU"
        )
        raise DeviceUnavailable(
            f"SINGTOME_DEVICE={device} but {why}; set SINGTOME_DEVICE=cpu (or auto) to run "
            "on the CPU, or run on a machine with a GPU"
        )
    index = device.index or 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(
            f"SINGTOME_DEVICE={device} but only {count} GPU(s) are visible (CUDA_VISIBLE_DEVICES?)"
        )
    if probe:
        try:
            torch.zeros(1, device=device).add_(1)
        except Exception as exc:  # a listed GPU that cannot run kernels is no GPU
            raise DeviceUnavailable(f"the GPU {device} is listed but unusable: {exc}") from exc


@dataclass(frozen=True)
class DeviceReport:
    """What the doctor prints about torch and the GPU."""

    torch_version: str
    cuda_build: str | None
    cuda_visible: bool
    gpus: list[dict[str, Any]]
    chosen: str | None
    error: str | None


def device_report(name: str) -> DeviceReport:
    import torch

    gpus: list[dict[str, Any]] = []
    visible = bool(torch.cuda.is_available())
    if visible:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {"index": index, "name": props.name, "memory_gb": props.total_memory / 1024**3}
            )
    chosen: str | None = None
    error: str | None = None
    try:
        chosen = str(resolve_device(name, probe=True))
    except DeviceUnavailable as exc:
        error = str(exc)
    return DeviceReport(torch.__version__, torch.version.cuda, visible, gpus, chosen, error)
