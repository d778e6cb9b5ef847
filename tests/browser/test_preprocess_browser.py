"""The Preprocess images tab in a real browser: a folder in, a training set out, bad input refused."""

from PIL import Image


def set_slider(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def write_sources(folder):
    folder.mkdir()
    for stem, color in (("apple", (200, 30, 30)), ("berry", (30, 30, 200))):
        Image.new("RGB", (96, 64), color).save(folder / f"{stem}.png")
    Image.new("RGBA", (96, 64), (30, 200, 30, 128)).save(folder / "clear.png")
    (folder / "broken.png").write_bytes(b"this is not a png")


def open_tab(page, source, destination):
    page.get_by_role("tab", name="Preprocess images").click()
    page.locator("#preprocess_source textarea").fill(str(source))
    page.locator("#preprocess_destination textarea").fill(str(destination))


def test_preprocess_folder_with_flips_and_a_corrupt_file(page, studio):
    _, folders = studio
    source, destination = folders["data"] / "raw", folders["data"] / "set"
    write_sources(source)

    open_tab(page, source, destination)
    set_slider(page, "preprocess_width", 64)
    set_slider(page, "preprocess_height", 64)
    page.locator("#preprocess_flip input[type=checkbox]").check()
    page.locator("#preprocess_run").click()
    page.wait_for_function("document.querySelector('#preprocess_summary').innerText.includes('4 of 4 files')",
                           timeout=30_000)

    summary = page.locator("#preprocess_summary").inner_text()
    assert "wrote 6 pictures" in summary and "skipped 1" in summary
    assert "broken.png" in summary and "not a readable picture" in summary
    assert page.locator("#preprocess_progress").inner_text().strip() == "Done."
    page.wait_for_function("document.querySelectorAll('#preprocess_gallery img').length === 6")
    # index = position of the source in sorted order: apple 0, berry 1, broken 2 (skipped), clear 3
    expected = {f"{index:05}-{sub}-{stem}.png" for index, stem in ((0, "apple"), (1, "berry"), (3, "clear"))
                for sub in (0, 1)}
    assert {p.name for p in destination.iterdir()} == expected
    original = Image.open(destination / "00000-0-apple.png")
    flipped = Image.open(destination / "00000-1-apple.png")
    assert original.size == flipped.size == (64, 64) and original.mode == "RGB"
    assert Image.open(destination / "00003-0-clear.png").mode == "RGB"


def test_destination_inside_source_is_refused(page, studio):
    _, folders = studio
    source = folders["data"] / "nested"
    write_sources(source)
    destination = source / "out"

    open_tab(page, source, destination)
    page.locator("#preprocess_run").click()
    toast = page.locator(".toast-body").first
    toast.wait_for()
    assert "destination" in toast.inner_text() and "inside the source folder" in toast.inner_text()
    assert not destination.exists()
    assert "Starting" not in page.locator("#preprocess_progress").inner_text()  # no job was started
