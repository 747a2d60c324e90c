"""Hard-patch mining (HPM): one reference training step, small enough for a CPU.

    python examples/hpm_step.py                 # 30 steps on 32 px synthetic images
    python examples/hpm_step.py --steps 200 --epochs 10

Where the predicted losses come from (Wang et al., CVPR 2023, arXiv:2304.05919;
Haochen-Wang409/HPM ``models_mae_learn_loss.py`` and ``engine_pretrain.py``):

1. The MAE has a second decoder beside the pixel decoder, the *loss predictor*: same input
   (visible latents plus mask tokens, in patch order), its own blocks and a one-number head
   per patch.
2. Before each step the EMA teacher runs on the *full* image (nothing masked) and its loss
   predictor scores every patch: (B, L) predicted losses.
3. :class:`maskkit.hardpatch.HardPatchMasker` masks the ``int(alpha * M)`` patches predicted
   hardest and the rest at random; ``alpha`` follows :class:`HardPatchSchedule` (0 to 0.5
   over training in HPM).
4. The student reconstructs the masked patches (per-patch MSE) and its loss predictor
   learns those per-patch losses (detached): HPM's default is a relative (ranking) loss
   over pairs of masked patches; ``--absolute`` uses the MSE to the per-image standardised
   losses instead.
5. The EMA teacher follows the student.

A stand-in for the real thing: a 2-block encoder, 1-block decoders, no cls token.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskkit.demo import SyntheticLesions
from maskkit.hardpatch import HardPatchMasker, HardPatchSchedule
from maskkit.mae import decoder_tokens, patch_targets, reconstruction_loss
from maskkit.patches import patchify
from maskkit.split import MaskSplit


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("HPM reference step", add_help=False)
    # ---- data and model ----
    parser.add_argument("--image_size", default=32, type=int)
    parser.add_argument("--patch_size", default=4, type=int)
    parser.add_argument("--embed_dim", default=64, type=int)
    parser.add_argument("--batch_size", default=16, type=int)
    # ---- masking ----
    parser.add_argument("--mask_ratio", default=0.75, type=float)
    parser.add_argument("--alpha_end", default=0.5, type=float, help="HPM's final hard share")
    parser.add_argument("--absolute", action="store_true", help="MSE loss-prediction target")
    # ---- schedule ----
    parser.add_argument("--steps", default=30, type=int)
    parser.add_argument("--epochs", default=3, type=int, help="steps are split into epochs")
    parser.add_argument("--lr", default=1e-3, type=float)
    parser.add_argument("--ema", default=0.99, type=float, help="EMA decay of the teacher")
    parser.add_argument("--seed", default=0, type=int)
    return parser


class TinyHPM(nn.Module):
    """An MAE with HPM's extra loss-prediction decoder, over (B, 3, H, W) images."""

    def __init__(self, *, image_size: int, patch_size: int, embed_dim: int = 64) -> None:
        super().__init__()
        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2
        pixels = patch_size * patch_size * 3
        decoder_dim = embed_dim // 2
        self.patch_embed = nn.Linear(pixels, embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, embed_dim) * 0.02)
        self.encoder = _blocks(embed_dim, depth=2)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, num_patches, decoder_dim) * 0.02)
        self.reconstructor = _blocks(decoder_dim, depth=1)
        self.pixel_head = nn.Linear(decoder_dim, pixels)
        # HPM's loss predictor: its own decoder blocks and a per-patch head.
        self.loss_predictor = _blocks(decoder_dim, depth=1)
        self.loss_head = nn.Linear(decoder_dim, 1)

    def forward(self, images: Tensor, split: MaskSplit | None) -> tuple[Tensor, Tensor]:
        """Pixels predicted for the masked patches (B, M, p*p*3) and predicted losses (B, L).

        ``split=None`` runs on the full image (HPM's teacher pass): every patch visible.
        """
        tokens = self.patch_embed(patchify(images, self.patch_size)) + self.pos_embed
        batch_size = tokens.shape[0]
        if split is not None:
            tokens = split.gather_visible(tokens)
        latent = self.decoder_embed(self.encoder(tokens))
        if split is None:
            decoder_in = latent + self.decoder_pos_embed
        else:  # visible latents and mask tokens in patch order, as MAE's un-shuffle
            decoder_in = decoder_tokens(
                latent, self.mask_token, self.decoder_pos_embed, split, num_prefix_tokens=0,
                order="patch",
            ).tokens  # fmt: skip
        predicted_loss = self.loss_head(self.loss_predictor(decoder_in))[..., 0]  # (B, L)
        if split is None:
            return decoder_in.new_zeros(batch_size, 0, 1), predicted_loss
        pixels = self.pixel_head(self.reconstructor(decoder_in))
        return split.gather_masked(pixels), predicted_loss


def _blocks(dim: int, depth: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def loss_prediction_loss(predicted: Tensor, target: Tensor, *, relative: bool = True) -> Tensor:
    """HPM's objective for the loss predictor, on the masked patches (B, M).

    ``relative``: for every pair (i, j) of masked patches of an image whose true losses
    differ, a logistic loss on ``predicted_i - predicted_j`` for "i is harder than j".
    Otherwise: MSE to the per-image standardised true losses.
    """
    target = target.detach()
    if relative:
        harder = (target[:, :, None] > target[:, None, :]).float()
        differ = (target[:, :, None] != target[:, None, :]).float()
        margin = predicted[:, :, None] - predicted[:, None, :]
        pairs = F.binary_cross_entropy_with_logits(margin, harder, reduction="none")
        return (pairs * differ).sum() / differ.sum().clamp_min(1.0)
    standardised = (target - target.mean(1, keepdim=True)) / (
        target.var(1, keepdim=True) + 1e-6
    ).sqrt()
    return F.mse_loss(predicted, standardised)


def train_step(
    model: TinyHPM,
    teacher: TinyHPM,
    masker: HardPatchMasker,
    images: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    alpha: float,
    ema: float,
    relative: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """One HPM step; returns the losses and the split (all tensors, no host sync)."""
    batch_size = images.shape[0]
    with torch.no_grad():
        _, predicted = teacher(images, None)  # (B, L): the teacher scores every patch
    split = masker(batch_size, predicted.shape[1], predicted, alpha=alpha, generator=generator)
    pixels, student_predicted = model(images, split)
    target = split.gather_masked(patch_targets(images, model.patch_size))
    per_patch = (pixels - target).square().mean(dim=-1)  # (B, M) losses, for the predictor
    reconstruction = reconstruction_loss(pixels, target)
    learn = loss_prediction_loss(
        split.gather_masked(student_predicted[..., None])[..., 0], per_patch, relative=relative
    )
    loss = reconstruction + learn
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for mine, theirs in zip(model.parameters(), teacher.parameters()):
            theirs.lerp_(mine, 1.0 - ema)
    return {
        "loss": loss.detach(),
        "reconstruction": reconstruction.detach(),
        "loss_prediction": learn.detach(),
        "teacher_predicted": predicted,
        "split": split,  # type: ignore[dict-item]
    }


def main(args: argparse.Namespace) -> list[dict[str, float]]:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    data = SyntheticLesions(args.batch_size * 4, image_size=args.image_size, seed=args.seed)
    images = torch.stack([data[i][0] for i in range(len(data))])
    model = TinyHPM(
        image_size=args.image_size, patch_size=args.patch_size, embed_dim=args.embed_dim
    )
    teacher = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    masker = HardPatchMasker(args.mask_ratio)
    schedule = HardPatchSchedule(args.epochs, end=args.alpha_end)
    steps_per_epoch = math.ceil(args.steps / args.epochs)
    history = []
    for step in range(args.steps):
        epoch = step // steps_per_epoch
        batch = images[torch.randint(len(images), (args.batch_size,), generator=generator)]
        out = train_step(
            model, teacher, masker, batch, optimizer,
            alpha=schedule(epoch), ema=args.ema, relative=not args.absolute, generator=generator,
        )  # fmt: skip
        record = {k: float(out[k]) for k in ("loss", "reconstruction", "loss_prediction")}
        if not math.isfinite(record["loss"]):
            raise SystemExit(f"loss is {record['loss']} at step {step}, stopping")
        history.append(record | {"epoch": epoch, "alpha": schedule(epoch)})
        if step % 10 == 0 or step == args.steps - 1:
            print(
                f"step {step:4d} epoch {epoch} alpha {schedule(epoch):.3f} "
                f"loss {record['loss']:.4f} (reconstruction {record['reconstruction']:.4f}, "
                f"loss prediction {record['loss_prediction']:.4f})"
            )
    return history


if __name__ == "__main__":
    main(argparse.ArgumentParser(parents=[get_args_parser()]).parse_args())
