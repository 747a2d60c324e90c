# MAE-, SAM-pre-trained and scratch encoders in SETR, on the built-in synthetic lesions (CPU)
python examples/main_pretrain.py --masker random --model vit_micro_patch8_64 --input_size 64 \
    --num_classes 2 --lesion_size 0.12 --num_train 256 --num_val 64 --cache_images \
    --decoder_embed_dim 64 --decoder_depth 2 --decoder_num_heads 4 --batch_size 32 \
    --epochs 12 --warmup_epochs 1 --blr 8e-3 --num_workers 0 --no_progress \
    --output_dir runs/transfer/mae
python examples/main_pretrain.py --masker sam --cls_loss_weight 10 --model vit_micro_patch8_64 \
    --input_size 64 --num_classes 2 --lesion_size 0.12 --num_train 256 --num_val 64 \
    --cache_images --decoder_embed_dim 64 --decoder_depth 2 --decoder_num_heads 4 \
    --batch_size 32 --epochs 12 --mask_warmup_epochs 8 --refresh_every 4 --warmup_epochs 1 \
    --blr 8e-3 --num_workers 0 --no_progress --output_dir runs/transfer/sam
for encoder in mae sam scratch; do
    finetune=runs/transfer/$encoder/checkpoint.pth
    [ $encoder = scratch ] && finetune=""
    python examples/main_segment.py --finetune "$finetune" --model vit_micro_patch8_64 \
        --input_size 64 --num_classes 2 --lesion_size 0.12 --num_train 64 --num_val 64 \
        --num_test 128 --cache_images --decoder_channels 32 --epochs 20 --lr 1e-3 \
        --num_workers 0 --no_progress --output_dir runs/transfer/segment_$encoder
done
