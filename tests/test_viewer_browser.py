"""The viewer in a real browser: Debian's chromium driven by Selenium (never downloaded: the
binary and the driver are given by path). What the canvas shows is read back from screenshots
and turned into map values through the page's colour table, then compared with the saved maps."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_viewer import caption_explanation, gaussian, many_targets_item, toy_image, write_caption_output, write_parquet_output

from mmcam.viewer import write_items, write_viewer
from mmcam.viewer.colormap import lookup_table

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="Debian's chromium is absent (/usr/bin/chromium); CI installs it: apt-get install -y chromium chromium-driver",
)

WORDS = ["a", "red", "circle", "left"]
SIZE = (48, 64)  # (H, W) of the toy images and maps


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--force-device-scale-factor=1", "--force-color-profile=srgb",
        "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory) -> Path:
    """Five items; their lowest log-probs are -0.5, -3, -0.1, -2, -1 (unsorted on purpose)."""
    out = tmp_path_factory.mktemp("run") / "out"
    lowest = {"s0": -0.5, "s1": -3.0, "s2": -0.1, "s3": -2.0, "s4": -1.0}
    write_caption_output(out, {stem: WORDS for stem in lowest}, SIZE, {stem: [value / 10, value, value / 5, value / 2] for stem, value in lowest.items()})
    write_viewer(out)
    return out


# ---------------------------------------------------------------- helpers


def open_page(browser, url: str, item: int | None = None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get("about:blank")  # a fresh document even when only the hash differs
    browser.get(url)
    root = WebDriverWait(browser, 10).until(lambda driver: driver.find_element(By.CSS_SELECTOR, ".mmcam-viewer[data-ready]"))
    if item is not None:
        wait_drawn(browser, root, item, 0)
    return root


def wait_drawn(browser, root, item: int, target: int, view: str = "heatmap", alpha: str = "0.5"):
    from selenium.webdriver.support.ui import WebDriverWait

    expected = f"{item}:{target}:{view}:{alpha}"
    WebDriverWait(browser, 10).until(lambda _: root.get_attribute("data-drawn") == expected)


def set_opacity(browser, root, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    slider = root.find_element(By.CSS_SELECTOR, "[data-role=opacity]")
    slider.send_keys({"1": Keys.END, "0": Keys.HOME}[value])


def canvas_pixels(root, index: int = 0) -> np.ndarray:
    from selenium.webdriver.common.by import By

    canvas = root.find_elements(By.CSS_SELECTOR, "canvas.mm-canvas")[index]
    return np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(np.float64)


def map_from_colours(pixels: np.ndarray) -> np.ndarray:
    """Map values (0..255) of a fully opaque overlay. Every pixel must be exactly one colour
    of the table (as the page rounds it); its entry is the value (the mean entry for the three
    colours that two neighbouring entries of jet share once rounded)."""
    table = np.floor(np.round(lookup_table(), 3) + 0.5).astype(np.int64)
    keys, inverse = np.unique((table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2], return_inverse=True)
    values = np.bincount(inverse, weights=np.arange(256)) / np.bincount(inverse)
    colours = pixels.astype(np.int64)
    wanted = (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]
    found = np.clip(np.searchsorted(keys, wanted), 0, len(keys) - 1)
    assert np.all(keys[found] == wanted), "a pixel is not a colour of the table"
    return values[found]


def upsampled(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """mmcam's upsampling (bilinear, align_corners=False) of a [0, 1] map, in 0..255."""
    tensor = torch.from_numpy(np.asarray(heatmap, np.float32))[None, None]
    return F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy() * 255


def assert_clean_console(browser) -> None:
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []


# ---------------------------------------------------------------- the pages


def test_pages_load_without_console_errors(browser, caption_run: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get_log("browser")
    root = open_page(browser, (caption_run / "viewer.html").as_uri())
    assert root.find_elements(By.CSS_SELECTOR, ".mm-fallback") == []  # the script ran and removed it
    cards = root.find_elements(By.CSS_SELECTOR, ".mm-card")
    assert [card.find_element(By.CSS_SELECTOR, ".mm-card-name").text for card in cards] == ["s0", "s1", "s2", "s3", "s4"]
    cards[2].click()
    wait_drawn(browser, root, 2, 0)
    assert browser.current_url.endswith("#item-2")
    assert [chip.text.split("\n")[0] for chip in root.find_elements(By.CSS_SELECTOR, ".mm-chip[data-t]")] == WORDS
    assert root.find_element(By.CSS_SELECTOR, "[data-role=method]").text == "gradcam"
    assert root.find_element(By.CSS_SELECTOR, "[data-role=layer]").text == "encoder.block"
    assert_clean_console(browser)


def test_hovering_word_k_shows_word_k_map(browser, caption_run: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    root = open_page(browser, (caption_run / "viewer.html").as_uri() + "#item-1", item=1)
    set_opacity(browser, root, "1")  # colours only, so that the map can be read back exactly
    wait_drawn(browser, root, 1, 0, alpha="1")
    saved = [np.load(caption_run / f"s1_{t:02d}_{word}.npy") for t, word in enumerate(WORDS)]
    for k in (2, 0, 3, 1):
        ActionChains(browser).move_to_element(root.find_element(By.CSS_SELECTOR, f'.mm-chip[data-t="{k}"]')).perform()
        wait_drawn(browser, root, 1, k, alpha="1")
        shown = map_from_colours(canvas_pixels(root))
        expected = [upsampled(heatmap, shown.shape) for heatmap in saved]
        errors = [np.abs(shown - candidate).mean() for candidate in expected]
        assert errors[k] < 1.0, errors  # within quantisation, on a 0..255 scale
        assert min(error for t, error in enumerate(errors) if t != k) > 20
        peak = np.unravel_index(shown.argmax(), shown.shape)
        true_peak = np.unravel_index(expected[k].argmax(), shown.shape)
        assert abs(peak[0] - true_peak[0]) <= 3 and abs(peak[1] - true_peak[1]) <= 3
    assert_clean_console(browser)


def test_arrow_keys_move_between_words_and_items(browser, caption_run: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    root = open_page(browser, (caption_run / "viewer.html").as_uri() + "#item-0", item=0)
    before = canvas_pixels(root)
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()
    wait_drawn(browser, root, 0, 1)
    assert root.get_attribute("data-target") == "1"
    assert np.abs(canvas_pixels(root) - before).mean() > 1  # another map is drawn
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT).perform()
    wait_drawn(browser, root, 0, 3)  # stops at the last word
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    wait_drawn(browser, root, 0, 2)
    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()  # the next item, same word
    wait_drawn(browser, root, 1, 2)
    assert browser.current_url.endswith("#item-1")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert root.get_attribute("data-item") is None
    assert_clean_console(browser)


def test_opacity_blends_image_and_colours_like_the_png_overlay(browser, caption_run: Path) -> None:
    root = open_page(browser, (caption_run / "viewer.html").as_uri() + "#item-3", item=3)
    halfway = canvas_pixels(root)
    set_opacity(browser, root, "1")
    wait_drawn(browser, root, 3, 0, alpha="1")
    colours = canvas_pixels(root)
    set_opacity(browser, root, "0")
    wait_drawn(browser, root, 3, 0, alpha="0")
    image = canvas_pixels(root)
    # overlay(): (1 - a) * image + a * colour, rounded
    assert np.abs(halfway - np.round(0.5 * image + 0.5 * colours)).max() <= 1
    shown = np.asarray(Image.open(caption_run.parent / "s3.png").convert("RGB").resize(image.shape[1::-1], Image.BILINEAR), np.float64)
    assert np.abs(image - shown).mean() < 8  # the image itself, resampled by the browser


def test_view_toggles_show_counterfactual_contrastive_guided_and_attention(browser, caption_run: Path) -> None:
    from selenium.webdriver.common.by import By

    root = open_page(browser, (caption_run / "viewer.html").as_uri() + "#item-0", item=0)
    set_opacity(browser, root, "1")
    wait_drawn(browser, root, 0, 0, alpha="1")
    for kind, name in (("counterfactual", "s0_00_a_counterfactual.npy"), ("contrast", "s0_contrast_00-a-vs-runner-up.npy")):
        root.find_element(By.CSS_SELECTOR, f"label[for$='-view-{kind}']").click()
        wait_drawn(browser, root, 0, 0, view=kind, alpha="1")
        shown = map_from_colours(canvas_pixels(root))
        assert np.abs(shown - upsampled(np.load(caption_run / name), shown.shape)).mean() < 1.0
    root.find_element(By.CSS_SELECTOR, "label[for$='-view-guided']").click()
    wait_drawn(browser, root, 0, 0, view="guided", alpha="1")
    shown = canvas_pixels(root)
    guided = Image.open(caption_run / "s0_00_a_guided.png").convert("RGB").resize(shown.shape[1::-1], Image.BILINEAR)
    assert np.corrcoef(shown.ravel(), np.asarray(guided, np.float64).ravel())[0, 1] > 0.9
    root.find_element(By.CSS_SELECTOR, "label[for$='-view-heatmap']").click()
    root.find_element(By.CSS_SELECTOR, "[data-role=attention]").click()
    wait_drawn(browser, root, 0, 0, alpha="1")
    attention = map_from_colours(canvas_pixels(root, 1))  # beside the map, both a little smaller
    assert attention.shape == (270, 360)
    assert np.abs(attention - upsampled(np.load(caption_run / "s0_00_a_attention.npy"), attention.shape)).mean() < 1.0
    shown = map_from_colours(canvas_pixels(root, 0))
    assert np.abs(shown - upsampled(np.load(caption_run / "s0_00_a.npy"), shown.shape)).mean() < 1.0
    root.find_element(By.CSS_SELECTOR, "[data-role=attention]").click()
    assert_clean_console(browser)


def test_export_downloads_the_current_view_as_png(browser, caption_run: Path) -> None:
    from selenium.webdriver.common.by import By

    root = open_page(browser, (caption_run / "viewer.html").as_uri() + "#item-4", item=4)
    browser.execute_script(
        "window.__exported = null; HTMLAnchorElement.prototype.click = function () {"
        " window.__exported = {name: this.download, href: this.href}; };"
    )
    root.find_element(By.CSS_SELECTOR, "[data-action=export]").click()
    exported = browser.execute_script("return window.__exported;")
    assert exported["name"] == "s4_00_a_heatmap.png"
    header, data = exported["href"].split(",", 1)
    assert header == "data:image/png;base64"
    png = Image.open(io.BytesIO(base64.b64decode(data)))
    canvas = canvas_pixels(root)
    assert png.size == (canvas.shape[1], canvas.shape[0])
    assert np.abs(np.asarray(png.convert("RGB"), np.float64) - canvas).max() <= 1


def test_sorting_and_filtering_reorder_the_dataset_page(browser, caption_run: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root = open_page(browser, (caption_run / "viewer.html").as_uri())

    def shown() -> list[str]:
        return [card.text.split("\n")[0] for card in root.find_elements(By.CSS_SELECTOR, ".mm-card:not([hidden])")]

    assert shown() == ["s0", "s1", "s2", "s3", "s4"]
    Select(root.find_element(By.CSS_SELECTOR, "[data-role=sort]")).select_by_value("minLogprob")
    assert shown() == ["s1", "s3", "s4", "s0", "s2"]  # -3, -2, -1, -0.5, -0.1
    root.find_element(By.CSS_SELECTOR, "[data-role=descending]").click()
    assert shown() == ["s2", "s0", "s4", "s3", "s1"]
    root.find_element(By.CSS_SELECTOR, "[data-role=max-logprob]").send_keys("-1")
    assert shown() == ["s4", "s3", "s1"]
    assert_clean_console(browser)


def test_a_parquet_output_upsamples_native_grid_maps_like_mmcam(browser, tmp_path: Path) -> None:
    image = tmp_path / "im.png"
    Image.fromarray(toy_image((32, 48))).save(image)
    grids = write_parquet_output(tmp_path / "pq", image)
    write_viewer(tmp_path / "pq")
    root = open_page(browser, (tmp_path / "pq" / "viewer.html").as_uri() + "#item-0", item=0)
    set_opacity(browser, root, "1")
    wait_drawn(browser, root, 0, 0, alpha="1")
    shown = map_from_colours(canvas_pixels(root))
    grid = grids[0][0]
    assert np.abs(shown - upsampled(grid / grid.max(), shown.shape)).mean() < 1.0
    assert_clean_console(browser)


@pytest.fixture(scope="module")
def thousand_items(tmp_path_factory) -> Path:
    """A 1,000-item caption output in the record format (README's contract), written directly."""
    out = tmp_path_factory.mktemp("big") / "out"
    out.mkdir()
    rng = np.random.default_rng(0)
    for n in range(1000):
        stem = f"img{n}"
        Image.fromarray(toy_image((64, 64), n)).save(out.parent / f"{stem}.png")
        words = []
        for t, word in enumerate(["a", "red", "circle"]):
            np.save(out / f"{stem}_{t:02d}_{word}.npy", gaussian((64, 64), tuple(rng.uniform(0, 63, 2)), 6.0))
            words.append({"word": word, "index": t, "logprob": float(-rng.random()), "peak_xy": [1, 2], "bbox": [0, 0, 3, 3], "heatmap": str(out / f"{stem}_{t:02d}_{word}.npy")})
        record = {"image": str(out.parent / f"{stem}.png"), "model": "toy", "layer": "l", "method": "gradcam", "caption": "a red circle", "words": words}
        (out / f"{stem}.json").write_text(json.dumps(record))
    write_viewer(out)
    return out


def test_a_thousand_item_output_opens_within_3_seconds(browser, thousand_items: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get("about:blank")
    start = time.perf_counter()
    root = open_page(browser, (thousand_items / "viewer.html").as_uri())
    elapsed = time.perf_counter() - start
    ready_ms = int(root.get_attribute("data-ready-ms"))  # since the navigation started
    assert len(root.find_elements(By.CSS_SELECTOR, ".mm-card")) == 1000
    assert ready_ms < 3000 and elapsed < 3.0, (ready_ms, elapsed)
    search = root.find_element(By.CSS_SELECTOR, "[data-role=search]")
    search.send_keys("img999", Keys.ENTER)
    (card,) = root.find_elements(By.CSS_SELECTOR, ".mm-card:not([hidden])")
    card.click()
    wait_drawn(browser, root, 999, 0)
    print(f"1,000 items: ready after {ready_ms} ms, {elapsed:.2f} s from get() in this test")
    assert_clean_console(browser)


def test_repr_html_fragments_behave_like_the_item_page_side_by_side(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    images = []
    for n in range(2):
        images.append(tmp_path / f"im{n}.png")
        Image.fromarray(toy_image(SIZE, n)).save(images[-1])
    explanations = [caption_explanation(image, WORDS) for image in images]
    cells = "".join(f"<div class='cell'>{explanation._repr_html_()}</div>" for explanation in explanations)
    page = tmp_path / "notebook.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>cells</title></head><body>{cells}</body></html>", encoding="utf-8")
    browser.get("about:blank")
    browser.get(page.as_uri())
    roots = WebDriverWait(browser, 10).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, ".mmcam-viewer[data-drawn]"))
    assert len(roots) == 2 and roots[0].get_attribute("id") != roots[1].get_attribute("id")
    first, second = roots
    set_opacity(browser, second, "1")
    wait_drawn(browser, second, 0, 0, alpha="1")
    chip = second.find_element(By.CSS_SELECTOR, '.mm-chip[data-t="2"]')
    ActionChains(browser).move_to_element(chip).perform()
    wait_drawn(browser, second, 0, 2, alpha="1")
    shown = map_from_colours(canvas_pixels(second))
    assert np.abs(shown - upsampled(explanations[1].heatmaps[2], shown.shape)).mean() < 1.0
    assert first.get_attribute("data-target") == "0"  # the other cell is untouched
    chip.send_keys(Keys.ARROW_RIGHT)  # keys act on the focused cell only
    wait_drawn(browser, second, 0, 3, alpha="1")
    assert first.get_attribute("data-target") == "0"
    assert_clean_console(browser)


def test_an_item_with_more_tiles_than_one_column_shows_its_last_word(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    item = many_targets_item()
    page = write_items(tmp_path / "long.html", [item], title="long", meta={})
    root = open_page(browser, page.as_uri() + "#item-0", item=0)
    set_opacity(browser, root, "1")
    wait_drawn(browser, root, 0, 0, alpha="1")
    chip = root.find_element(By.CSS_SELECTOR, '.mm-chip[data-t="69"]')
    ActionChains(browser).scroll_to_element(chip).move_to_element(chip).perform()
    wait_drawn(browser, root, 0, 69, alpha="1")
    shown = map_from_colours(canvas_pixels(root))
    assert np.abs(shown - upsampled(item.targets[69].maps["heatmap"], shown.shape)).mean() < 1.0
    assert_clean_console(browser)
