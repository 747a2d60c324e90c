# The paper's Tab. 3 grid on your image folder (DATA/train, DATA/val and, if you have it,
# DATA/test), tiny CPU config, 3 seeds: runs/ablation/ablation.md, ablation.json, ablation.png
python examples/ablation.py --data imagefolder --data_path /data/busi --config tiny \
    --seeds 0 1 2 --device cpu --num_workers 2 --output_dir runs/ablation
