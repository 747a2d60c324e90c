from maskkit import MaskingSchedule

# MSMAE pre-training: random masking for 40 epochs, then the maps are refreshed before
# epoch 40 and every 40 epochs after it (epochs count from 0).
pretrain = MaskingSchedule(warmup_epochs=40, refresh_every=40)
assert pretrain.use_random(39) and not pretrain.use_random(40)
refreshes = [epoch for epoch in range(300) if pretrain.should_refresh(epoch)]
assert refreshes == [40, 80, 120, 160, 200, 240, 280]
assert pretrain.last_refresh(100) == 80  # the maps epoch 100 masks with
assert pretrain.last_refresh(10) is None  # warm-up: no maps yet

# MSMAE fine-tuning: SAM from the first epoch, maps refreshed every 20 epochs.
finetune = MaskingSchedule(warmup_epochs=0, refresh_every=20)
assert [e for e in range(100) if finetune.should_refresh(e)] == [0, 20, 40, 60, 80]
