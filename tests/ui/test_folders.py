"""folder_inside: folder fields of an open --listen server stay inside the data root."""

import os

import pytest

from ti.errors import ConfigError
from ui.folders import folder_inside


@pytest.mark.parametrize("text, inside", [
    ("pictures", "pictures"),
    ("./pictures/cats", "pictures/cats"),
    ("", "."),
    ("pictures/../other", "other"),
])
def test_folders_inside_the_root_are_taken_relative_to_it(tmp_path, text, inside):
    assert folder_inside(text, tmp_path, "source") == (tmp_path / inside).resolve()


@pytest.mark.parametrize("text", ["/etc", "..", "../elsewhere", "pictures/../../elsewhere"])
def test_folders_outside_the_root_are_refused_by_field(tmp_path, text):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ConfigError, match="outside the data folder") as refused:
        folder_inside(text, root, "Source directory")
    assert refused.value.field == "Source directory"


def test_an_absolute_path_inside_the_root_is_fine_and_a_symlink_out_is_not(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    assert folder_inside(str(root / "data"), root, "source") == (root / "data").resolve()
    os.symlink(tmp_path, root / "escape")
    with pytest.raises(ConfigError):
        folder_inside("escape", root, "source")


def test_without_a_root_nothing_is_confined(tmp_path):
    assert str(folder_inside("/etc", None, "source")) == "/etc"
