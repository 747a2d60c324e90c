"""A structural replica of facebookresearch/mae's ``MaskedAutoencoderViT`` for the tests.

facebookresearch/mae is not on PyPI and its licence (CC BY-NC 4.0) forbids copying it, so
this module is written from its documented behaviour, not from its text. It keeps what
maskkit's adapter relies on:

- the attribute names: ``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``,
  ``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``,
  ``decoder_norm``, ``decoder_pred``, ``norm_pix_loss``; no ``num_prefix_tokens``;
- fixed 2-D sin-cos position tables of shape (1, 1 + L, D) held as frozen parameters,
  with an all-zero row 0 for the cls token, in encoder and decoder;
- ``random_masking(x, mask_ratio)``: ``noise = rand(B, L)``, keep the ``int(L * (1 -
  mask_ratio))`` patches of smallest noise in ascending-noise order, ``mask`` 1 on the
  others (in patch order), ``ids_restore`` the inverse permutation;
- the encoder adds positions before masking and prepends the cls token after it; the
  decoder keeps the cls token at position 0, appends mask tokens, un-shuffles with
  ``ids_restore`` and adds its position table;
- ``forward(imgs, mask_ratio) -> (loss, pred (B, L, p * p * 3), mask)`` with the loss
  averaged over the removed patches, optionally on per-patch normalised pixels;
- ``patchify`` / ``unpatchify`` in the (p, p, 3) patch layout.

Today's timm no longer takes MAE's ``qk_scale`` argument, which is left out here.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def sincos_table(width: int, grid: int) -> Tensor:
    """(1 + grid * grid, width) sin-cos positions, row 0 zeros for the cls token.

    Half of the channels encode one grid axis and half the other, each as sines then
    cosines of the coordinate at geometric frequencies (MAE, MoCo v3).
    """
    quarter = width // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )

    def encode(coordinate: Tensor) -> Tensor:
        angles = coordinate.reshape(-1, 1) * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    # MAE's grid puts the column coordinate first.
    table = torch.cat([encode(cols), encode(rows)], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), table]).float()


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a light decoder, laid out like facebookresearch/mae's."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 8,
        in_chans: int = 3,
        embed_dim: int = 32,
        depth: int = 2,
        num_heads: int = 4,
        decoder_embed_dim: int = 24,
        decoder_depth: int = 1,
        decoder_num_heads: int = 4,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] | partial = nn.LayerNorm,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        count = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + count, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + count, decoder_embed_dim), requires_grad=False
        )
        norm = norm_layer
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.norm_pix_loss = norm_pix_loss
        self._init_weights()

    def _init_weights(self) -> None:
        side = math.isqrt(self.patch_embed.num_patches)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_table(self.pos_embed.shape[-1], side)[None])
            self.decoder_pos_embed.copy_(sincos_table(self.decoder_pos_embed.shape[-1], side)[None])
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def patchify(self, imgs: Tensor) -> Tensor:
        """(N, 3, H, W) → (N, L, p * p * 3), rows in patch order, channels last."""
        p = self.patch_embed.patch_size[0]
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(N, L, p * p * 3) → (N, 3, H, W) for a square grid."""
        p = self.patch_embed.patch_size[0]
        side = math.isqrt(x.shape[1])
        x = x.reshape(x.shape[0], side, side, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], 3, side * p, side * p)

    def random_masking(self, x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, L, D) → (kept tokens (N, K, D), mask (N, L) 1 = removed, ids_restore)."""
        n, length, width = x.shape
        keep = int(length * (1 - mask_ratio))
        order = torch.rand(n, length, device=x.device).argsort(dim=1)  # small noise = kept
        ids_restore = order.argsort(dim=1)
        kept = x.gather(1, order[:, :keep, None].expand(-1, -1, width))
        removed = (torch.arange(length, device=x.device) >= keep).float().expand(n, -1)
        return kept, removed.gather(1, ids_restore), ids_restore

    def forward_encoder(self, imgs: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.decoder_embed(x)
        n, length = ids_restore.shape
        hidden = self.mask_token.repeat(n, length + 1 - x.shape[1], 1)
        patches = torch.cat([x[:, 1:, :], hidden], dim=1)
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, mask_ratio: float = 0.75) -> tuple[Tensor, Tensor, Tensor]:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


def mae_vit_tiny(**kwargs: object) -> MaskedAutoencoderViT:
    """A tiny model in the shape of MAE's ``mae_vit_*`` factories (LayerNorm eps 1e-6)."""
    return MaskedAutoencoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
