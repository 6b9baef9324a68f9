"""Dataset items: lines of an items file, decoded in DataLoader worker processes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch.utils.data import Dataset

from ..batch import error_line, read_batch
from ..io import LoadedImage, load_image
from .task import DatasetTask


@dataclass(frozen=True)
class DatasetItem:
    """One line: ``item`` (its 0-based line in the file), the image path, the text (caption,
    None to generate, or question), the given answer, or why the line is bad; ``path``: where
    to read the image when not ``image`` (absolute, for workers in other folders)."""

    item: int
    image: str
    text: str | None = None
    answer: str | None = None
    error: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class DecodedItem:
    """An item with its decoded image, or the error that decoding (or the line) gave."""

    item: DatasetItem
    image: LoadedImage | None
    error: str | None = None


def read_items(path: str | os.PathLike, task: DatasetTask) -> list[DatasetItem]:
    """Every non-blank line of ``path`` as an item; a bad line is an item with its error."""
    required, optional = task.fields
    text_field = "caption" if task.kind == "caption" else "question"
    return [
        DatasetItem(line.line - 1, line.image, line.fields.get(text_field), line.fields.get("answer"), line.error)
        for line in read_batch(path, required=required, optional=optional)
    ]


def decode(item: DatasetItem) -> DecodedItem:
    """Load an item's image; a bad line or an unreadable image becomes its error."""
    if item.error:
        return DecodedItem(item, None, item.error)
    try:
        return DecodedItem(item, load_image(item.path or item.image))
    except Exception as error:  # one unreadable image must not stop the dataset
        message = error_line(error)  # named as the items file names it
        return DecodedItem(item, None, message.replace(item.path, item.image) if item.path else message)


class DecodingDataset(Dataset):
    """Items whose images are decoded on access (in a DataLoader's worker processes)."""

    def __init__(self, items: list[DatasetItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> DecodedItem:
        return decode(self.items[index])


def as_list(batch: list[DecodedItem]) -> list[DecodedItem]:
    """The DataLoader's collate: the items as they are (images differ in size)."""
    return batch


def by_length(items: list[DatasetItem]) -> list[DatasetItem]:
    """``items`` ordered by their text's word count (stable; captions to generate first), so
    a minibatch pads its captions little: a padded caption's backward pass costs as much as
    the longest one's. Rows carry their ``item``, so the order of the work is free."""
    return sorted(items, key=lambda item: len(item.text.split()) if item.text else 0)
