# The paper's settings (ViT-B/16, 300 + 100 epochs) on 4 GPUs, HAM10000's tables with a test
# table, 5 seeds, EMA weights reported beside the raw ones
torchrun --nproc_per_node 4 examples/ablation.py --data csv \
    --csv_train /data/ham10000/train.csv --csv_val /data/ham10000/val.csv \
    --csv_test /data/ham10000/test.csv \
    --image_dir /data/ham10000/HAM10000_images_part_1 /data/ham10000/HAM10000_images_part_2 \
    --seeds 0 1 2 3 4 --model_ema --output_dir runs/ablation_ham
