"""Convert a checkpoint released by the original MGD/CPS project into our segmentor file.

    python -m furnace.tools.convert_official SRC DST --arch ARCH [--branch branch1|branch2|branch3]
        [--num-classes N] [--dataset voc|cityscapes]

The original files store ``{'model': state_dict}`` with keys ``branch<k>.{backbone,head,classifier}.*``.
CPS teacher files: branch1 and branch2 are two networks of one architecture (branch1 is the teacher).
MGD student files: branch1 = student, branch2 = wide teacher (wrn50_2), branch3 = deep teacher (resnet101).
The converted file gives exactly the original network's outputs and loads with ``load_segmentor`` and as a
teacher file. Every tensor of the branch must map onto the network (same name and shape) or be one the original
never used (mobilenetv2 backbone.classifier.1.*, wrn50_2 backbone.fc.*); else nothing is written and the
offending tensors are listed. Example, the deep teacher of an MGD student release:

  python -m furnace.tools.convert_official voc8_mgd_r18.pth \\
      DATA/model-weight/teachers/voc_1-8_resnet101.pth --arch resnet101 --branch branch3
"""
import argparse
import sys

from ..models.backbones import ARCHS
from ..models.weights import BRANCHES, convert_official
from ..utils import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.tools.convert_official",
                                     description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="SRC", help="original checkpoint ({'model': state_dict} or a bare state dict)")
    parser.add_argument("dst", metavar="DST", help="segmentor file to write (atomically)")
    parser.add_argument("--arch", required=True, choices=ARCHS, help="architecture of the chosen branch")
    parser.add_argument("--branch", default="branch1", choices=BRANCHES,
                        help="which network of the file to take (default: branch1)")
    parser.add_argument("--num-classes", type=int, default=None, metavar="N",
                        help="expected class count; default: read from classifier.weight (a mismatch is an error)")
    parser.add_argument("--dataset", default=None, choices=("voc", "cityscapes"),
                        help="record this dataset's class names and palette in the file (used by "
                             "furnace.tools.predict); default: none, predict then goes by the class count")
    args = parser.parse_args(argv)

    def body():
        summary = convert_official(args.src, args.dst, args.arch, args.branch, args.num_classes, args.dataset)
        dropped = f"; dropped the unused {', '.join(summary['dropped'])}" if summary["dropped"] else ""
        print(f"{args.src} [{args.branch}] -> {summary['dst']}: {summary['arch']}, {summary['num_classes']} "
              f"classes, {summary['tensors']} tensors{dropped}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
