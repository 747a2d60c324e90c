"""Mixed precision settings: autocast on CUDA only, a gradient scaler for float16."""

from __future__ import annotations

import torch

__all__ = ["amp_settings"]


def amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """The autocast dtype (None = full precision) and the gradient scaler for ``--amp``.

    Args:
        amp: ``"auto"`` (bfloat16 where the GPU supports it, else float16; float32 on CPU),
            ``"bf16"``, ``"fp16"`` or ``"none"``.
        device: the training device.

    Raises:
        ValueError: ``bf16`` or ``fp16`` asked for on a CPU run.
    """
    if device.type != "cuda":
        if amp in ("bf16", "fp16"):
            raise ValueError(f"--amp {amp} needs a CUDA device; CPU runs use --amp none (or auto)")
        dtype = None
    elif amp == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    # Only float16 needs loss scaling; bfloat16 has float32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return dtype, scaler
