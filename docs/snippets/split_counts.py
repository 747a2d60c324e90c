import torch

from maskkit import SAMMasker, split_counts

# (visible, masked, thrown) per sample. The visible count comes first, by MAE's and
# Hugging Face's rule int(L * (1 - (mask_ratio + throw_ratio))); then int(L * mask_ratio)
# are masked and the rest are thrown.
assert split_counts(196, 0.75) == (49, 147, 0)  # MAE
assert split_counts(196, 0.45, 0.30) == (49, 88, 59)  # MSMAE's SAM
assert split_counts(196, 0.45, 0.40) == (29, 88, 79)  # AMT's ratios
assert split_counts(10, 0.75) == (2, 8, 0)  # MAE's len_keep = int(10 * 0.25) = 2
# (m, t) keeps what MAE and HF keep with mask_ratio = m + t: int(196 * (1 - 0.75)) = 49.
assert split_counts(196, 0.55, 0.20).visible == 49
counts = split_counts(196, 0.45, 0.30)
assert (counts.visible, counts.masked, counts.thrown) == (49, 88, 59)

# Every sample of a batch gets exactly these counts, so the split is three dense tensors.
split = SAMMasker(0.45, 0.30)(4, 196, torch.rand(4, 196))
arange = torch.arange(196).expand(4, -1)

# The three groups partition the patches ...
assert torch.equal(split.ids_shuffle.sort(dim=1).values, arange)
assert torch.equal(split.ids_shuffle, torch.cat([split.visible, split.masked, split.thrown], 1))
# ... ids_restore undoes ids_shuffle, as in MAE ...
assert torch.equal(split.ids_shuffle.gather(1, split.ids_restore), arange)
# ... and labels say the same per patch: 0 visible, 1 masked, -1 thrown.
assert torch.equal(split.labels.gather(1, split.masked), torch.ones(4, 88, dtype=torch.int8))
assert split.is_thrown().sum(dim=1).eq(59).all()
assert torch.equal(split.loss_mask(), split.is_masked().float())  # MAE's loss mask
