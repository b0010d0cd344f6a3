"""Datasets of MGD-SSSS: split lists, layouts, the dataset class, augmentation, CutMix masks and the training
loader. Tools: ``python -m furnace.datasets.<tool>`` with prepare_voc, prepare_cityscapes, make_splits,
make_synthetic, check."""

from .cutmix import box_mask
from .dataset import SegDataset, read_image, read_label
from .device import to_device
from .layouts import LAYOUTS, DatasetLayout, dataset_dir, folder_layout, layout_of
from .lists import read_list, split_paths
from .loader import TrainLoader, build_val_dataset
from .transforms import normalize, train_transform

__all__ = ["LAYOUTS", "DatasetLayout", "SegDataset", "TrainLoader", "box_mask", "build_val_dataset", "check_dataset",
           "dataset_dir", "folder_layout", "layout_of", "normalize", "read_image", "read_label", "read_list",
           "split_paths", "to_device", "train_transform"]


def __getattr__(name):
    # Lazy, so that `python -m furnace.datasets.check` does not find its own module already imported.
    if name == "check_dataset":
        from .check import check_dataset
        return check_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
