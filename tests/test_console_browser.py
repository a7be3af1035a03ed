"""The web console in a real headless Chromium (Debian's chromium + chromium-driver, driven
by selenium) against a real server with API keys: the collections page, a search by id,
a bad filter's message, a read-only key, and the metrics chart. Screenshots go to the
folder printed at the start (``LAMINA_SCREENSHOTS`` to choose it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lamina
from lamina.server.auth import ApiKey, hash_key, new_key
from tests.conftest import ServerThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver (Debian; .ci/run does it)"
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(f"no Chromium and chromedriver on PATH: {INSTALL}", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason='selenium is missing: pip install -e ".[test]"')
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

DIM = 8
N = 400


def positions() -> np.ndarray:
    """Point i sits at x = i + 0.001 i^2 on the first axis: distinct gaps, so the nearest
    neighbours of any point come in one order (no ties)."""
    i = np.arange(N, dtype=np.float64)
    return i + 0.001 * i * i


class Site:
    def __init__(self, tmp: Path) -> None:
        self.keys = {"admin": new_key(), "read": new_key()}
        configured = [ApiKey(n, hash_key(k), n) for n, k in self.keys.items()]
        self.server = ServerThread(tmp / "data", keys=configured, console=True, sample_every=0.5)
        assert self.server.console is not None
        self.url = self.server.console.url
        with lamina.connect(self.server.address, api_key=self.keys["admin"]) as db:
            docs = db.create_collection(
                "docs", dim=DIM, metric="l2", index={"type": "flat"}, segment_rows=256
            )
            vectors = np.zeros((N, DIM), dtype=np.float32)
            vectors[:, 0] = positions()
            docs.upsert(
                list(range(N)), vectors, [{"n": i, "lang": "en" if i % 2 else "de"} for i in range(N)]
            )
            docs.optimize()
            docs.search(vectors[0], k=5)  # compiles the search kernels before any page times a search
            notes = db.create_collection("notes", dim=4, multi_tenant=True)
            notes.upsert([1, 2, 3], np.eye(3, 4), tenant="acme")
            notes.upsert([1], np.eye(1, 4), tenant="beta")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("console-site"))
    yield s
    s.server.stop()


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest) -> Path:
    folder = Path(os.environ.get("LAMINA_SCREENSHOTS") or tempfile.mkdtemp(prefix="lamina-console-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nconsole screenshots: {folder}", flush=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,860",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(20)
    yield driver
    driver.quit()


def wait(browser: Any, css: str, timeout: float = 15) -> Any:
    try:
        return WebDriverWait(browser, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, css))
    except TimeoutException:
        raise AssertionError(
            f"{css} never appeared; page: {browser.find_element(By.ID, 'main').text}"
        ) from None


def forget_key(browser: Any, site: Site) -> None:
    """Clear the tab's stored key and leave the page, so that the next load starts afresh."""
    browser.get(site.url)
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")


def sign_in(browser: Any, site: Site, role: str, page: str = "#/collections") -> None:
    """Open the console with the key of ``role`` typed into its key form."""
    forget_key(browser, site)
    browser.get(site.url + page)
    wait(browser, "#api-key").send_keys(site.keys[role])
    browser.find_element(By.ID, "key-submit").click()
    WebDriverWait(browser, 10).until(lambda d: role in d.find_element(By.ID, "whoami").text)


def test_collections_page_lists_every_collection(browser: Any, site: Site, shots: Path) -> None:
    forget_key(browser, site)
    browser.get(site.url)
    wait(browser, "#key-form")  # this server requires a key: the console asks for one
    sign_in(browser, site, "admin")
    wait(browser, "#collections-table")
    rows = browser.find_elements(By.CSS_SELECTOR, "#collections-table tbody tr")
    assert [r.get_attribute("data-collection") for r in rows] == ["docs", "notes"]
    assert "400" in rows[0].text and "l2" in rows[0].text and "multi-tenant" in rows[1].text
    assert len(browser.find_elements(By.CSS_SELECTOR, ".delete-collection")) == 2  # admin may delete
    assert browser.find_elements(By.ID, "create-form")
    browser.save_screenshot(str(shots / "collections.png"))


def test_search_by_id_returns_the_nearest_ids_in_order(browser: Any, site: Site, shots: Path) -> None:
    sign_in(browser, site, "read", "#/search/docs")
    wait(browser, "#search-id")
    Select(browser.find_element(By.ID, "search-mode")).select_by_value("id")
    browser.find_element(By.ID, "search-id").send_keys("100")
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("6")
    browser.find_element(By.ID, "run-search").click()
    wait(browser, "#hits tbody tr")
    got = [int(r.get_attribute("data-id")) for r in browser.find_elements(By.CSS_SELECTOR, "#hits tbody tr")]
    x = positions()
    expected = list(np.argsort(np.abs(x - x[100]), kind="stable")[:6])  # exact ground truth
    assert got == expected and got[0] == 100
    assert "Query plan: 6 hits" in browser.find_element(By.ID, "plan").text
    browser.save_screenshot(str(shots / "search.png"))


def test_a_bad_filter_shows_the_apis_own_message(browser: Any, site: Site, shots: Path) -> None:
    sign_in(browser, site, "read", "#/points/docs")
    wait(browser, "#points-table")
    bad = '{"n": {"$between": [1, 5]}}'
    browser.find_element(By.ID, "filter").send_keys(bad)
    browser.find_element(By.ID, "apply-filter").click()
    shown = wait(browser, "#filter-error").text
    with (
        lamina.connect(site.server.address, api_key=site.keys["read"]) as db,
        pytest.raises(lamina.InvalidArgument) as err,
    ):
        db.get_collection("docs").scroll(filter={"n": {"$between": [1, 5]}})
    assert shown == f"INVALID_ARGUMENT: {err.value}"
    browser.save_screenshot(str(shots / "bad-filter.png"))
    # a good filter pages through the matching points
    field = browser.find_element(By.ID, "filter")
    field.clear()
    field.send_keys('{"lang": "en", "n": {"$lt": 10}}')
    browser.find_element(By.ID, "apply-filter").click()
    WebDriverWait(browser, 10).until(lambda d: "5 points match" in d.find_element(By.ID, "points-out").text)
    rows = browser.find_elements(By.CSS_SELECTOR, "#points-table tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == ["1", "3", "5", "7", "9"]


def test_a_read_only_key_sees_no_delete_buttons_and_cannot_delete(
    browser: Any, site: Site, shots: Path
) -> None:
    sign_in(browser, site, "read")
    wait(browser, "#collections-table")
    assert browser.find_elements(By.CSS_SELECTOR, "#collections-table tbody tr")
    assert browser.find_elements(By.CSS_SELECTOR, ".delete-collection") == []
    assert browser.find_elements(By.ID, "create-form") == []
    browser.save_screenshot(str(shots / "read-only.png"))
    # the request the button would send, forced from the page: the server refuses it
    status, body = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch('/api/collections/docs', {method: 'DELETE',
              headers: {Authorization: 'Bearer ' + sessionStorage.getItem('lamina-key')}})
          .then(async (r) => done([r.status, await r.json()]));"""
    )
    assert status == 403 and body["error"]["code"] == "PERMISSION_DENIED"
    assert "Collections/Delete needs admin" in body["error"]["message"]
    with lamina.connect(site.server.address, api_key=site.keys["admin"]) as db:
        assert db.get_collection("docs").count() == N


def test_the_metrics_chart_draws_after_a_few_searches(browser: Any, site: Site, shots: Path) -> None:
    sign_in(browser, site, "read", "#/metrics")
    wait(browser, "#chart-qps canvas")
    with lamina.connect(site.server.address, api_key=site.keys["read"]) as db:
        docs = db.get_collection("docs")
        for _ in range(4):
            for i in range(20):
                docs.search(np.eye(1, DIM)[0] * i, k=5)
            time.sleep(0.5)
    # the requests/s line is drawn in its own colour (#2f5fd0): count those pixels
    count_line = """
        const c = document.querySelector('#chart-qps canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 47 && d[i + 1] === 95 && d[i + 2] === 208) n++;
        return n;"""
    WebDriverWait(browser, 15).until(lambda d: d.execute_script(count_line) > 50)
    status = browser.find_element(By.ID, "metrics-status").text
    assert "requests/s" in status and "p99" in status
    assert int(browser.find_element(By.ID, "main").get_attribute("data-samples")) >= 3
    time.sleep(0.6)  # let the next sample land before the picture
    browser.save_screenshot(str(shots / "metrics.png"))


def test_point_view_more_like_this_tenants_and_snapshots_pages(browser: Any, site: Site, shots: Path) -> None:
    sign_in(browser, site, "admin", "#/points/docs")
    wait(browser, "#points-table a.point-link").click()
    card = wait(browser, "#point-card").text
    assert "Point 0" in card and '"lang": "de"' in card and "vector (8 dims)" in card
    browser.find_element(By.LINK_TEXT, "more like this").click()  # the playground, searching by it
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hits tbody tr"))
    first = browser.find_element(By.CSS_SELECTOR, "#hits tbody tr").get_attribute("data-id")
    assert first == "0" and browser.find_element(By.ID, "search-id").get_attribute("value") == "0"

    browser.get(site.url + "#/tenants/notes")
    tenants = [r.text for r in wait(browser, "#tenants-table").find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert tenants == ["acme 3 searched exactly", "beta 1 searched exactly"]
    browser.get(site.url + "#/tenants/docs")
    WebDriverWait(browser, 10).until(lambda d: "is not multi-tenant" in d.find_element(By.ID, "main").text)

    browser.get(site.url + "#/snapshots/docs")
    wait(browser, "#create-snapshot").click()
    row = wait(browser, "#snapshots-table tbody tr")
    assert "400" in row.text
    browser.save_screenshot(str(shots / "snapshots.png"))
    row.find_element(By.CSS_SELECTOR, ".delete-snapshot").click()
    browser.switch_to.alert.accept()  # the confirmation
    WebDriverWait(browser, 10).until(lambda d: "No snapshots." in d.find_element(By.ID, "snapshots-out").text)
    with lamina.connect(site.server.address, api_key=site.keys["admin"]) as db:
        assert db.list_snapshots("docs") == []
