# A tiny run on CPU, on the built-in synthetic lesions: pre-train, then fine-tune
python examples/main_pretrain.py --model vit_micro_patch8_64 --input_size 64 \
    --decoder_embed_dim 64 --decoder_depth 2 --decoder_num_heads 4 --batch_size 32 \
    --epochs 12 --mask_warmup_epochs 6 --refresh_every 6 --warmup_epochs 2 \
    --output_dir runs/pretrain_tiny
python examples/main_finetune.py --model vit_micro_patch8_64 --input_size 64 \
    --batch_size 32 --epochs 6 --warmup_epochs 1 --refresh_every 3 \
    --finetune runs/pretrain_tiny/checkpoint.pth --output_dir runs/finetune_tiny
