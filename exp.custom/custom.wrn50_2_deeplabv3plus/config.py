"""Your own data (the folder layout), wide teacher T_W: DeepLabv3+ Wide-ResNet-50-2 trained with CPS + CutMix.

The dataset folder holds images/, labels/ (index PNGs, same stem; an image without a label is an unlabeled
image), classes.txt and the lists that `python -m furnace.datasets.make_splits --folder DATA_ROOT` writes;
see the README, "Train MGD on your own data". The recipe is furnace.config.folder_config (the VOC one); this
file states what differs from it and the values people change. Only the data root and the class count are
specific to your data:

    DATA_ROOT=/path/to/mydata NUM_CLASSES=5 bash script.sh     # NUM_CLASSES defaults to classes.txt's lines

Override anything on the command line: `python train.py KEY=VALUE`.
"""
from furnace.config import folder_config

C = config = folder_config(__file__)
# C.data_root = "/path/to/mydata"  # default DATA/custom of this repository (env DATA_ROOT overrides)
# C.num_classes = 5  # default 0: the lines of <data_root>/classes.txt (env NUM_CLASSES overrides)
# C.ignore_index = 255  # the void value in your label PNGs (>= num_classes; env IGNORE_INDEX overrides)
C.labeled_ratio = 0  # 0: your images with a label are the labeled ones (splits/{labeled,unlabeled}.txt);
#                     N: the simulated 1/N partition splits/train_{labeled,unlabeled}_1-N.txt (make_splits --ratios N)
C.iters_per_ratio = {"0": 40000}  # the natural partition's run length in iterations (≈ VOC 1/8's 39,338)
C.method = "cps"
C.arch = "wrn50_2"  # ImageNet weights: <WEIGHT_DIR, default DATA/model-weight>/wrn50_2.pth
C.lr = 0.001
C.epochs_per_ratio = {"16": 32, "8": 34, "4": 40, "2": 60}  # simulated partitions: constant total iterations
C.export_teacher = ""  # "" -> <WEIGHT_DIR>/teachers/<folder>_natural_wrn50_2.pth (labeled_ratio N: _1-N_)
