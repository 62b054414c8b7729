"""The label map: class index, name and overlay colour.

Its one home is ``model_repository/shelf_segmenter/labels.txt``, one class per line as
``name #rrggbb``; line *i* is class id *i*. Triton reads the same file through the config's
``label_filename``, and training, synthesis and overlay drawing all load it through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Label:
    index: int
    name: str
    color: tuple[int, int, int]  # RGB


@dataclass(frozen=True)
class LabelMap:
    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a label map needs at least one class")
        if [label.index for label in self.labels] != list(range(len(self.labels))):
            raise ValueError("label indices must be 0..N-1 in order")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate class names in label map: {names}")

    @classmethod
    def from_file(cls, path: Path) -> LabelMap:
        labels = []
        for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not _is_hex_color(parts[1]):
                raise ValueError(f"{path}:{line_no}: expected 'name #rrggbb', got {line!r}")
            rgb = tuple(int(parts[1][i : i + 2], 16) for i in (1, 3, 5))
            labels.append(Label(index=len(labels), name=parts[0], color=rgb))  # type: ignore[arg-type]
        return cls(tuple(labels))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def index(self, name: str) -> int:
        for label in self.labels:
            if label.name == name:
                return label.index
        raise KeyError(f"unknown class {name!r}; known: {self.names}")

    def palette(self) -> np.ndarray:
        """An (N, 3) uint8 RGB lookup table: ``palette()[mask]`` colours a mask."""
        return np.array([label.color for label in self.labels], dtype=np.uint8)


def _is_hex_color(text: str) -> bool:
    return len(text) == 7 and text[0] == "#" and all(c in "0123456789abcdefABCDEF" for c in text[1:])
