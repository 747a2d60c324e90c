"""Drive Hugging Face ``ViTMAEForPreTraining`` with maskkit splits, through its ``noise``.

HF's ViTMAE masks inside its embeddings (``ViTMAEEmbeddings.random_masking``, read from
transformers 5.23): ``len_keep = int(L * (1 - config.mask_ratio))``,
``ids_shuffle = argsort(noise)`` ascending, the first ``len_keep`` patches are kept, and
``mask`` (1 = removed) and ``ids_restore = argsort(ids_shuffle)`` are returned. Passing
``noise = split.ids_restore`` (each patch's rank in ``split.ids_shuffle``) makes HF's
``argsort`` give back ``split.ids_shuffle``, so HF keeps exactly ``split.visible``, in
the same order, and its ``ids_restore`` equals the split's (``tests/test_dropin.py``).

HF cannot throw. It has only kept and removed patches: every removed patch gets a mask
token in the decoder and counts in HF's loss. With a masking-and-throwing split
(AMT, MSMAE's SAM):

* set ``config.mask_ratio = mask_ratio + throw_ratio`` so that HF keeps as many patches as
  the split has visible ones (:func:`check_keeps_visible` verifies it);
* thrown patches are then *removed* in HF: still out of the encoder, but the decoder spends
  mask tokens on them and ``outputs.loss`` includes them. :func:`masked_loss` recomputes
  the loss over the split's masked patches only, as AMT and MSMAE do; the decoder's extra
  tokens remain (only a decoder that drops them, as in ``examples/dropin_mae.py``, saves
  that compute).

Run (CPU, a few seconds; nothing is downloaded)::

    python examples/dropin_hf_vitmae.py --steps 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from maskkit import IndexedDataset, MaskSplit, SAMMasker, SyntheticLesions, lesion_hit_counts

__all__ = [
    "build_model",
    "noise_for_split",
    "check_keeps_visible",
    "masked_loss",
    "get_args_parser",
    "main",
]


def build_model(
    *, image_size: int = 32, patch_size: int = 4, mask_ratio: float = 0.75
) -> ViTMAEForPreTraining:
    """A tiny, randomly initialised ``ViTMAEForPreTraining`` (no download)."""
    config = ViTMAEConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        decoder_hidden_size=48,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=96,
        mask_ratio=mask_ratio,
    )
    return ViTMAEForPreTraining(config)


def noise_for_split(split: MaskSplit) -> Tensor:
    """HF ``noise`` (B, L) float32 whose ascending argsort is ``split.ids_shuffle``.

    HF keeps the patches with the smallest noise; the ranks ``ids_restore`` put the
    visible patches first (then masked, then thrown), without ties.
    """
    return split.ids_restore.float()


def check_keeps_visible(config: ViTMAEConfig, split: MaskSplit) -> None:
    """Raise ``ValueError`` unless HF keeps as many patches as ``split`` has visible ones.

    HF's count is ``int(L * (1 - config.mask_ratio))``; with throwing, set
    ``config.mask_ratio`` to ``mask_ratio + throw_ratio``.
    """
    num_patches, num_visible = split.num_patches, split.visible.shape[1]
    hf_keeps = int(num_patches * (1 - config.mask_ratio))
    if hf_keeps != num_visible:
        raise ValueError(
            f"HF ViTMAE with mask_ratio={config.mask_ratio} keeps {hf_keeps} of {num_patches} "
            f"patches but the split has {num_visible} visible; set config.mask_ratio to the "
            "masker's mask_ratio + throw_ratio"
        )


def masked_loss(
    model: ViTMAEForPreTraining, pixel_values: Tensor, logits: Tensor, split: MaskSplit
) -> Tensor:
    """HF's reconstruction loss restricted to the split's masked patches (thrown excluded).

    Args:
        model: the HF model (its ``patchify`` and ``norm_pix_loss`` give the target).
        pixel_values: (B, C, H, W) input.
        logits: (B, L, p * p * C) ``outputs.logits``.
        split: the split whose noise produced ``logits``.
    """
    target = model.patchify(pixel_values)
    if model.config.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((logits - target) ** 2).mean(dim=-1)
    mask = split.mask(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("maskkit drop-in for HF ViTMAE", add_help=False)
    parser.add_argument("--steps", default=20, type=int, help="optimisation steps")
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--lr", default=1e-3, type=float)
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--mask_ratio", default=0.45, type=float, help="SAM mask ratio")
    parser.add_argument("--throw_ratio", default=0.30, type=float, help="SAM throw ratio")
    parser.add_argument("--num_samples", default=64, type=int, help="synthetic images")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train a tiny HF ViTMAE with SAM splits (oracle lesion weights); returns the losses."""
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(argv)
    torch.manual_seed(args.seed)
    dataset = SyntheticLesions(args.num_samples, image_size=32, num_classes=3, seed=args.seed)
    # Oracle weights for a self-contained demo; MSMAE uses a supervised encoder's attention.
    lesion = torch.stack([dataset.lesion_patches(i, 4) for i in range(len(dataset))])
    masker = SAMMasker(args.mask_ratio, args.throw_ratio)
    model = build_model(mask_ratio=args.mask_ratio + args.throw_ratio)
    num_patches = model.vit.embeddings.patch_embeddings.num_patches
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    loader = DataLoader(
        IndexedDataset(dataset),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    losses: list[float] = []
    hf_losses: list[float] = []
    hits, total = 0, 0
    step = 0
    while step < args.steps:
        for images, _, indices in loader:
            if step == args.steps:
                break
            split = masker(len(images), num_patches, lesion[indices].float())
            check_keeps_visible(model.config, split)
            outputs = model(pixel_values=images, noise=noise_for_split(split))
            loss = masked_loss(model, images, outputs.logits, split)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            hf_losses.append(outputs.loss.item())  # includes the thrown patches
            batch_hits, batch_total = lesion_hit_counts(split, lesion[indices])
            hits, total = hits + batch_hits, total + batch_total
            if step % 5 == 0 or step == args.steps - 1:
                print(
                    f"step {step:3d} masked-only loss {loss.item():.4f} "
                    f"(HF's loss, thrown included: {outputs.loss.item():.4f})"
                )
            step += 1
    print(f"lesion hit rate (SAM, oracle weights): {hits / total:.3f}")
    return {"losses": losses, "hf_losses": hf_losses, "lesion_hit_rate": hits / total}


if __name__ == "__main__":
    main()
