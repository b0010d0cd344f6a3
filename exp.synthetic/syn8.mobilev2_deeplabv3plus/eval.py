"""Evaluate saved snapshots: python eval.py -e 20-33 | -e last | -e all | -e PATH [--save-pred DIR] [KEY=VALUE ...]."""
from config import config
from furnace.run import eval_main

if __name__ == "__main__":
    eval_main(config)
