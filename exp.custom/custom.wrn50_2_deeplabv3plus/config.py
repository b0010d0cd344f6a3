"""Your own data (the folder layout), wide teacher T_W: DeepLabv3+ Wide-ResNet-50-2 trained with CPS + CutMix.

The dataset folder holds images/, labels/ (index PNGs, same stem), classes.txt and the lists that
`python -m furnace.datasets.make_splits --folder DATA_ROOT` writes; see the README, "Train MGD on your
own data". Only the data root and the class count are specific to your data:

    DATA_ROOT=/path/to/mydata NUM_CLASSES=5 bash script.sh     # NUM_CLASSES defaults to classes.txt's lines

The recipe is the VOC one. Edit the values below (or override any of them: `python train.py KEY=VALUE`).
"""
from furnace.config import folder_config

C = config = folder_config(__file__)

# -- data
# C.data_root = "/path/to/mydata"  # default: env DATA_ROOT, else DATA/custom of this repository
# C.num_classes = 5                # default: env NUM_CLASSES, else the lines of <data_root>/classes.txt
C.ignore_index = 255  # the void value in your label PNGs (>= num_classes)
C.labeled_ratio = 8  # 1/N labeled: selects splits/train_{labeled,unlabeled}_1-N.txt, epochs, teacher files
C.crop_size = 512
C.train_scales = [0.5, 0.75, 1.0, 1.5, 1.75, 2.0]
C.num_workers = 4

# -- model
C.arch = "wrn50_2"
C.output_stride = 16
C.pretrained = "auto"  # <WEIGHT_DIR, default DATA/model-weight>/wrn50_2.pth (torchvision or timm state dict)

# -- method
C.method = "cps"
C.sup_loss = "ce"
C.lambda_cps = 1.0
C.export_teacher = ""  # "" -> DATA/model-weight/teachers/<data folder name>_1-<ratio>_wrn50_2.pth (what the students load)

# -- optimisation: effective values for the global batch, on any number of GPUs
C.global_batch = 8
C.micro_batch = 0  # per-GPU forward batch; smaller -> gradient accumulation (0 = global / GPUs)
C.lr = 0.001
C.momentum = 0.9
C.weight_decay = 0.0004  # not applied to biases and norm parameters
C.lr_power = 0.9  # poly schedule, per iteration
C.epochs_per_ratio = {"16": 32, "8": 34, "4": 40, "2": 60}  # constant total iterations
C.amp = "auto"  # bf16 on GPUs that support it, else fp16; off on CPU

# -- evaluation
C.eval_crop = 512  # sliding window, stride ceil(2/3 * crop)
C.eval_scales = [1.0]
C.eval_flip = False
