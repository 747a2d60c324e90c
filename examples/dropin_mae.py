"""Drop maskkit into an MAE written like facebookresearch/mae's ``models_mae.py``.

MAE's ``random_masking(x, mask_ratio)`` returns ``(x_masked, mask, ids_restore)``. A
:class:`maskkit.MaskSplit` carries the same three things, so the swap is three lines::

    split = RandomMasker(0.75)(B, L, device=x.device)         # was: random_masking(x, 0.75)
    x_masked, mask, ids_restore = masking_outputs(x, split)   # identical to MAE's outputs

``RandomMasker`` draws MAE's noise (``torch.rand(B, L)``) and sorts it the same way, so
with the same RNG state the outputs are equal, bit for bit (``tests/test_dropin.py``).

Swapping in :class:`maskkit.SAMMasker` (MSMAE) adds weights and *throwing*: the encoder
sees the visible patches, the decoder sees them plus one mask token per masked patch (a
thrown patch gets no token at all), and the loss covers the masked patches only. The
decoder below adds each token's position embedding by gathering it at the token's patch
index, so it needs no un-shuffle and never builds the full L-token sequence; with nothing
thrown it computes exactly what MAE's un-shuffling decoder computes.

Run (CPU, a few seconds)::

    python examples/dropin_mae.py --steps 40 --out /tmp/dropin_mae

It trains a tiny MAE on :class:`maskkit.SyntheticLesions`, first with random masking, then
with SAM. In MSMAE the SAM weights are a supervised encoder's cls attention
(:class:`maskkit.MaskWeightBank`); to stay self-contained this example uses the
ground-truth lesion patches as oracle weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.data import DataLoader

from maskkit import (
    IndexedDataset,
    MaskSplit,
    RandomMasker,
    SAMMasker,
    SyntheticLesions,
    gather_tokens,
    lesion_hit_counts,
    patchify,
    save_mask_grid,
)

__all__ = ["MaskedAutoencoder", "masking_outputs", "get_args_parser", "main"]


def masking_outputs(x: Tensor, split: MaskSplit) -> tuple[Tensor, Tensor, Tensor]:
    """The drop-in for MAE's ``random_masking``: its three outputs, read off a split.

    Args:
        x: (B, L, D) patch tokens, position embedding already added.
        split: the batch's split (visible patches are kept, in ``split.visible`` order).

    Returns:
        ``x_masked`` (B, K, D), ``mask`` (B, L) with 1 = masked (MAE's polarity; thrown
        patches are 0 so they stay out of the loss), ``ids_restore`` (B, L).
    """
    return split.gather_visible(x), split.mask(x.dtype), split.ids_restore


class MaskedAutoencoder(nn.Module):
    """A compact MAE (He et al., 2022) whose masking comes from a maskkit split.

    Same layout as MAE's ``MaskedAutoencoderViT``: patch embedding, fixed 2-D sin-cos
    position embeddings, timm ``Block`` encoder and decoder, a linear pixel predictor.

    Args:
        img_size: Square input side.
        patch_size: Patch side p.
        in_chans: Input channels C.
        embed_dim: Encoder width D.
        depth: Encoder blocks.
        num_heads: Encoder heads.
        decoder_embed_dim: Decoder width.
        decoder_depth: Decoder blocks.
        decoder_num_heads: Decoder heads.
        mlp_ratio: MLP hidden width over block width.
        norm_pix_loss: Normalise each target patch by its mean and variance (MAE option).
    """

    def __init__(
        self,
        *,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        decoder_embed_dim: int = 48,
        decoder_depth: int = 1,
        decoder_num_heads: int = 4,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = list(self.patch_embed.grid_size)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sin-cos embeddings of the patches; the cls token gets none (zeros), as in MAE.
        self.register_buffer("pos_embed", build_sincos2d_pos_embed(grid, embed_dim)[None])
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", build_sincos2d_pos_embed(grid, decoder_embed_dim)[None]
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, imgs: Tensor, split: MaskSplit) -> Tensor:
        """Encode the visible patches: (B, C, H, W) → (B, 1 + K, D), cls token first."""
        x = self.patch_embed(imgs) + self.pos_embed
        x, _, _ = masking_outputs(x, split)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: Tensor, split: MaskSplit) -> Tensor:
        """Predict the masked patches' pixels from the encoded visible tokens.

        The decoder sequence is the cls token, the K visible tokens and M mask tokens, in
        the order of ``split.ids_shuffle[:, :K + M]``; thrown patches have no token.

        Args:
            latent: (B, 1 + K, D) encoder output.
            split: the split the encoder used.

        Returns:
            (B, M, p * p * C) predictions for ``split.masked``, in that order.
        """
        x = self.decoder_embed(latent)
        batch, num_visible = x.shape[0], split.visible.shape[1]
        num_masked = split.masked.shape[1]
        mask_tokens = self.mask_token.expand(batch, num_masked, -1)
        tokens = torch.cat([x[:, 1:], mask_tokens], dim=1)
        kept = split.ids_shuffle[:, : num_visible + num_masked]
        tokens = tokens + gather_tokens(self.decoder_pos_embed.expand(batch, -1, -1), kept)
        x = torch.cat([x[:, :1], tokens], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1 + num_visible :]

    def forward_loss(self, imgs: Tensor, pred: Tensor, split: MaskSplit) -> Tensor:
        """Mean squared error over the masked patches (thrown and visible ones excluded).

        Args:
            imgs: (B, C, H, W) input images.
            pred: (B, M, p * p * C) predictions for ``split.masked``.
            split: the batch's split.
        """
        target = split.gather_masked(patchify(imgs, self.patch_size))
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return ((pred - target) ** 2).mean()

    def forward(self, imgs: Tensor, split: MaskSplit) -> tuple[Tensor, Tensor]:
        """Returns ``(loss, pred)``, ``pred`` (B, M, p * p * C) in ``split.masked`` order."""
        latent = self.forward_encoder(imgs, split)
        pred = self.forward_decoder(latent, split)
        return self.forward_loss(imgs, pred, split), pred


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("maskkit drop-in MAE", add_help=False)
    # Training
    parser.add_argument("--steps", default=40, type=int, help="optimisation steps in total")
    parser.add_argument(
        "--warmup_steps", default=20, type=int, help="steps of random masking (0.75) before SAM"
    )
    parser.add_argument("--batch_size", default=16, type=int)
    parser.add_argument("--lr", default=1e-3, type=float, help="AdamW lr, betas (0.9, 0.95)")
    parser.add_argument("--seed", default=0, type=int)
    # Masking (MSMAE Table 4)
    parser.add_argument("--mask_ratio", default=0.45, type=float, help="SAM mask ratio")
    parser.add_argument("--throw_ratio", default=0.30, type=float, help="SAM throw ratio")
    # Data and output
    parser.add_argument("--num_samples", default=96, type=int, help="synthetic images")
    parser.add_argument("--out", default=None, type=Path, help="folder for the mask PNGs")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train a tiny MAE with random, then SAM masking; returns losses and lesion hit rates."""
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(argv)
    torch.manual_seed(args.seed)
    dataset = SyntheticLesions(args.num_samples, image_size=32, num_classes=3, seed=args.seed)
    model = MaskedAutoencoder(img_size=32, patch_size=4)
    # Oracle weights: 1 on lesion patches, 0 elsewhere (MSMAE uses cls attention instead).
    lesion = torch.stack([dataset.lesion_patches(i, 4) for i in range(len(dataset))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    loader = DataLoader(
        IndexedDataset(dataset),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    random_masker = RandomMasker(0.75)
    sam_masker = SAMMasker(args.mask_ratio, args.throw_ratio)
    losses: list[float] = []
    # Lesion patches masked and lesion patches seen, per phase, summed over batches.
    counts = {"random": [0, 0], "sam": [0, 0]}
    step = 0
    while step < args.steps:
        for images, _, indices in loader:
            if step == args.steps:
                break
            phase = "random" if step < args.warmup_steps else "sam"
            if phase == "random":
                split = random_masker(len(images), model.num_patches)
            else:
                split = sam_masker(len(images), model.num_patches, lesion[indices].float())
            loss, _ = model(images, split)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            hits, total = lesion_hit_counts(split, lesion[indices])
            counts[phase][0] += hits
            counts[phase][1] += total
            if step % 10 == 0 or step == args.steps - 1:
                print(f"step {step:3d} [{phase}] loss {loss.item():.4f}")
            if args.out is not None and step in (0, args.warmup_steps):
                save_mask_grid(
                    args.out / f"masks_{phase}.png",
                    images,
                    split,
                    patch_size=4,
                    weights=lesion[indices].float().view(-1, 8, 8),
                    lesion_masks=torch.stack([dataset.lesion_mask(int(i)) for i in indices]),
                    scale=4,
                )
            step += 1
    hit_rate = {phase: hits / total for phase, (hits, total) in counts.items() if total}
    print("lesion hit rate:", {phase: round(rate, 3) for phase, rate in hit_rate.items()})
    return {"losses": losses, "lesion_hit_rate": hit_rate}


if __name__ == "__main__":
    main()
