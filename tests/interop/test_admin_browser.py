"""The admin page in a real browser: headless Chromium driven by selenium 4.

A node with a token and real content (C-STOREs from a pynetdicom SCU; a finished job with its
overlay PNG and a delivery, written through the JobQueue API). The browser opens the page with
``?token=``, follows the links (which must carry the token), and shows the job's overlay
image; the screenshot is decoded and checked: its size, that it is not blank, that the page's
own CSS applied under its Content-Security-Policy, and that the overlay's colours are on it.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import NodeFactory, wait_for
from dicom_samples import PATIENT_ID, PATIENT_NAME, ct_series
from peers import require_tool
from PIL import Image
from pydicom.uid import generate_uid
from scu import association

from scanet_node.catalog.jobs import AttemptInfo, JobQueue, JobSpec
from scanet_node.catalog.store import utcnow
from scanet_node.config import Destination

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-token-0123456789abcdef"
#: The overlay's bands: saturated colours that nothing else on the page uses.
OVERLAY_COLOURS = [(230, 20, 20), (20, 20, 230), (250, 230, 20)]
HEADER_COLOUR = (22, 50, 79)  # #16324f, the page's CSS
WIDTH, HEIGHT = 1280, 1000


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (Debian packages chromium and chromium-driver)."""
    require_tool("chromium", "apt-get install chromium", CHROMIUM)
    require_tool("chromedriver", "apt-get install chromium-driver", CHROMEDRIVER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, as tests/run and CI run
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--force-device-scale-factor=1",
        "--no-first-run",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def overlay_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (90 * len(OVERLAY_COLOURS), 160))
    for n, colour in enumerate(OVERLAY_COLOURS):
        image.paste(colour, (90 * n, 0, 90 * (n + 1), 160))
    image.save(path)


def finished_job(queue: JobQueue, study_uid: str, series_uid: str, results: Path) -> int:
    """A job finished and delivered, as a worker records it."""
    job = queue.create_job(
        JobSpec(
            study_uid,
            "pk",
            series_uid,
            generate_uid(),
            "sig",
            inputs_received_at=utcnow() - timedelta(seconds=40),
        )
    )
    assert job is not None and queue.claim_job("gpu-1:77", 60) is not None
    overlay_png(results / "overlay.png")
    assert queue.finish_job(
        job.id,
        "gpu-1:77",
        outcome="analysed",
        reason=None,
        probability=0.27,
        positive=False,
        model="SCANet test 0123456789ab",
        sr_sop_instance_uid=generate_uid(),
        results_dir=str(results),
        timings={"load": 2.0, "register": 6.0, "infer": 1.0},
        destinations=[Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=11999)],
    )
    delivery = queue.deliveries(job_id=job.id)[0]
    queue.record_attempt(
        delivery.id,
        AttemptInfo(utcnow(), 0.9, True, False, "sent", "4 instances stored", 4),
        next_attempt_at=None,
    )
    return job.id


def check_screenshot(driver: Any, path: Path) -> Image.Image:
    """Take, save and decode a screenshot; it has the viewport's size and is not blank."""
    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height, ratio = driver.execute_script(
        "return [window.innerWidth, window.innerHeight, window.devicePixelRatio]"
    )
    assert image.size == (round(width * ratio), round(height * ratio))
    assert image.size[0] >= WIDTH * 0.9
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, "blank screenshot"
    # The header's background (the page's own inline CSS, allowed by its CSP hash).
    assert image.getpixel((5, 5)) == HEADER_COLOUR
    return image


def count_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 6) -> int:
    return sum(
        n
        for n, c in image.getcolors(maxcolors=1 << 20) or []
        if all(abs(a - b) <= tolerance for a, b in zip(c, colour, strict=True))
    )


def test_browser_shows_the_pages_and_the_overlay(
    node_factory: NodeFactory, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    node = node_factory(
        admin={"enabled": True, "port": 0, "token": TOKEN},
        pipeline={"series_settle_seconds": 0.3},
    )
    series = ct_series(4, description="CTA Head")
    with association(node, calling="CT02") as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
    job_id = finished_job(
        JobQueue(node.catalog),
        series[0].StudyInstanceUID,
        series[0].SeriesInstanceUID,
        tmp_path / "results" / "job-1",
    )
    wait_for("the association to be listed", node.listener.service.recent_associations)
    assert node.admin is not None

    browser.get(f"{node.admin.url}?token={TOKEN}")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Last associations" in body and "CT02" in body and "released" in body
    header = browser.execute_script(
        "return getComputedStyle(document.querySelector('header')).backgroundColor"
    )
    assert header == "rgb(22, 50, 79)", "the inline CSS was blocked"
    check_screenshot(browser, tmp_path / "overview.png")

    # Follow the links, as a person would: each carries the token.
    browser.find_element(By.LINK_TEXT, "Jobs").click()
    assert browser.current_url.endswith(f"/jobs?token={TOKEN}")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "0.270 negative" in body and "load 2.0 · register 6.0 · infer 1.0" in body
    check_screenshot(browser, tmp_path / "jobs.png")

    browser.find_element(By.LINK_TEXT, str(job_id)).click()
    assert f"/jobs/{job_id}?token=" in browser.current_url
    img = browser.find_element(By.CSS_SELECTOR, "img")
    browser.execute_script("arguments[0].scrollIntoView()", img)
    wait_for(
        "the overlay image to load",
        lambda: browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img
        ),
        10,
    )
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 270
    assert browser.execute_script("return arguments[0].naturalHeight", img) == 160
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "4 instances stored" in body
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    (tmp_path / "job.png").write_bytes(browser.get_screenshot_as_png())
    assert image.size[0] >= WIDTH * 0.9 and len(image.getcolors(1 << 20) or []) > 20
    for colour in OVERLAY_COLOURS:
        # Each band is 90 x 160 px in the image, drawn at its natural size.
        assert count_near(image, colour) >= 0.8 * 90 * 160, colour
    for secret in (PATIENT_ID, *PATIENT_NAME.split("^")):
        assert secret not in browser.page_source


def test_browser_shows_the_performance_page_with_its_plots_and_the_clis_figures(
    node_factory: NodeFactory, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import numpy as np
    from monitoring_samples import analysed_studies
    from node_config import node_config
    from selenium.webdriver.common.by import By

    from scanet_node.cli import main

    node = node_factory(admin={"enabled": True, "port": 0, "token": TOKEN})
    rng = np.random.default_rng(21)
    probabilities = [round(float(p), 4) for p in rng.uniform(0.05, 0.95, 36)]
    grades = ["2c" if rng.random() < p else "2b" for p in probabilities]
    analysed_studies(node.catalog, probabilities, grades)
    config = node_config(tmp_path / "cli.toml", data_dir=node.settings.node.data_dir)
    capsys.readouterr()
    assert main(["performance", "--json", "--config", str(config)]) == 0
    overall = json.loads(capsys.readouterr().out)["performance"]["overall"]
    assert node.admin is not None

    browser.get(f"{node.admin.url}?token={TOKEN}")
    browser.find_element(By.LINK_TEXT, "Performance").click()
    assert browser.current_url.endswith(f"/performance?token={TOKEN}")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert f"ROC-AUC (95 % CI) {overall['roc_auc']:.3f} ({overall['roc_auc_low']:.3f}-" in body
    assert f"Brier score {overall['brier']:.3f}" in body
    assert f"Sensitivity at the threshold {overall['sensitivity']:.3f}" in body
    assert "Studies with an outcome 36" in body
    images = browser.find_elements(By.CSS_SELECTOR, "img")
    assert len(images) == 2
    for img in images:
        browser.execute_script("arguments[0].scrollIntoView()", img)
        wait_for(
            "the plot to load",
            lambda img=img: browser.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", img
            ),
            10,
        )
        assert browser.execute_script("return arguments[0].naturalWidth", img) == 420
        assert browser.execute_script("return arguments[0].naturalHeight", img) == 380
    png = browser.get_screenshot_as_png()  # the ROC plot in view
    (tmp_path / "performance-plot.png").write_bytes(png)
    plot = Image.open(io.BytesIO(png)).convert("RGB")
    assert count_near(plot, (31, 119, 180), tolerance=30) > 100  # matplotlib's C0 curve
    browser.execute_script("window.scrollTo(0, 0)")
    check_screenshot(browser, tmp_path / "performance.png")
