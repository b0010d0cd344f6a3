"""Train this experiment: python train.py [--resume auto|PATH] [KEY=VALUE ...] (or torchrun ... train.py)."""
from config import config
from furnace.run import train_main

if __name__ == "__main__":
    train_main(config)
