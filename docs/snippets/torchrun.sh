# 4 GPUs on one machine: --batch_size is per process, so the effective batch is 4 x 64
torchrun --nproc_per_node 4 examples/main_pretrain.py --data imagefolder \
    --data_path /data/busi --batch_size 64 --output_dir runs/pretrain_busi
torchrun --nproc_per_node 4 examples/main_finetune.py --data imagefolder \
    --data_path /data/busi --batch_size 64 \
    --finetune runs/pretrain_busi/checkpoint.pth --output_dir runs/finetune_busi

# 2 CPU processes (gloo), e.g. to try the distributed path without GPUs
torchrun --nproc_per_node 2 examples/main_pretrain.py --device cpu \
    --model vit_micro_patch8_64 --input_size 64 --decoder_embed_dim 64 --decoder_depth 2 \
    --decoder_num_heads 4 --batch_size 16 --epochs 4 --mask_warmup_epochs 2 \
    --refresh_every 2 --warmup_epochs 1 --output_dir runs/pretrain_ddp_cpu
