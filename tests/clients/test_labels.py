from pathlib import Path

import numpy as np
import pytest

from clients.labels import LabelMap


def test_repository_label_map_names_the_product_classes(contract):
    labels = contract.labels
    assert labels.names[:4] == ["background", "product", "shelf_edge", "price_tag"]
    assert labels.index("price_tag") == 3
    assert labels.palette().shape == (len(labels), 3)
    assert labels.palette().dtype == np.uint8


def test_unknown_class_name_is_a_clear_error(contract):
    with pytest.raises(KeyError, match="unknown class 'shelf_wobbler'"):
        contract.labels.index("shelf_wobbler")


@pytest.mark.parametrize("line", ["product", "product ff8c00", "product #ff8c0", "product #gg8c00 extra"])
def test_malformed_label_lines_name_the_file_and_line(tmp_path: Path, line: str):
    path = tmp_path / "labels.txt"
    path.write_text(f"background #000000\n{line}\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: expected 'name #rrggbb'"):
        LabelMap.from_file(path)


def test_duplicate_names_are_rejected(tmp_path: Path):
    path = tmp_path / "labels.txt"
    path.write_text("background #000000\nbackground #ffffff\n")
    with pytest.raises(ValueError, match="duplicate class names"):
        LabelMap.from_file(path)
