"""Face datasets (streamed indexes, never pixels in memory), splits, a torch wrapper and
the registry of named datasets under the data root."""

from fer_core.data.datasets import (
    FER2013_USAGES,
    FERPLUS_SPLITS,
    DataWarning,
    FaceDataset,
    Fer2013CsvDataset,
    FerPlusDataset,
    FerPlusVotes,
    FolderDataset,
    Sample,
    SplitDataset,
    SubsetDataset,
    ferplus_emotion_votes,
    ferplus_majority,
    load_ferplus_votes,
)
from fer_core.data.registry import (
    DatasetEntry,
    available_datasets,
    dataset_folder,
    dataset_names,
    install_archive,
    open_dataset,
    register_dataset,
)
from fer_core.data.splits import (
    SplitWarning,
    grid_groups,
    per_class_split,
    sequential_group_splits,
    stratified_group_kfold,
    stratified_group_split,
    stratified_kfold,
    stratified_split,
)
from fer_core.data.torch_dataset import BadFileLog, TorchFaceDataset, collate_skip_bad

__all__ = [
    "FER2013_USAGES", "FERPLUS_SPLITS", "DataWarning", "FaceDataset", "Fer2013CsvDataset", "FerPlusDataset",
    "FerPlusVotes", "FolderDataset", "Sample", "SplitDataset", "SubsetDataset", "ferplus_emotion_votes", "ferplus_majority",
    "load_ferplus_votes", "DatasetEntry", "available_datasets", "dataset_folder", "dataset_names", "install_archive", "open_dataset",
    "register_dataset", "SplitWarning", "grid_groups", "per_class_split", "sequential_group_splits", "stratified_group_kfold",
    "stratified_group_split", "stratified_kfold", "stratified_split", "BadFileLog", "TorchFaceDataset", "collate_skip_bad",
]
