"""Generation speed of the web page (charrnn/web/, docs/WEB.md) in headless Chromium.

    python -m benchmarks.web_speed --length 5000 --repeats 5

Serves the page (charrnn.serve) on a free port, opens it in headless Chromium through
Selenium with the CLI's settings in the URL (`run=1` generates on load), and prints the
characters per second the page reports for each repeat (a fresh page each time: the
warm state is computed once per page, before the page's clock starts, as the CLI does)
and their median. The browser helpers here are also tests/test_web.py's.
"""

from __future__ import annotations

if __name__ == "__main__":  # from any Python: re-run under the environment that has selenium
    from charrnn.common.bootstrap import require_environment
    require_environment("modern", "selenium", "make setup")

import argparse
import contextlib
import shutil
import statistics
import threading
import time
import urllib.parse
from collections.abc import Iterator

from charrnn.serve import make_server, page_url

# Debian's packages (apt-get install chromium chromium-driver; `make browser`); other
# systems' names after them.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)
WINDOW_SIZE = (1200, 900)


def find_browser() -> tuple[str | None, str | None]:
    """(Chromium's path, chromedriver's path); None for each that is not on PATH."""
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = next(filter(None, map(shutil.which, DRIVERS)), None)
    return browser, driver


def start_chromium(browser: str, driver: str, window_size: tuple[int, int] = WINDOW_SIZE):
    """Headless Chromium driven by Selenium, keeping the page's console log (`get_log`).
    Both paths are given, so Selenium Manager never looks for a browser on the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size={},{}".format(*window_size)):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """The page served from a thread on a free port; yields its URL."""
    server = make_server("127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield page_url(server)
    finally:
        server.shutdown()
        server.server_close()


def wait_for_state(driver, states: tuple[str, ...] = ("ready", "done", "error"),
                   timeout_s: float = 120.0) -> str:
    """Wait until the page's <body data-state> is one of `states`; return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = driver.execute_script("return document.body.dataset.state")
        if state in states:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page stayed {state!r} for {timeout_s} s")
        time.sleep(0.05)


def measure(driver, url: str, **params) -> float:
    """Chars/s of one generation of the page at `url` with URL parameters `params`."""
    driver.get(f"{url}?{urllib.parse.urlencode({**params, 'run': 1})}")
    state = wait_for_state(driver, ("done", "error"))
    if state == "error":
        raise RuntimeError(driver.find_element("id", "message").text)
    return float(driver.find_element("id", "speed").get_attribute("data-chars-per-second"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=5000, help="characters per generation")
    parser.add_argument("--repeats", type=int, default=5, help="generations, each a fresh page")
    parser.add_argument("--seed", default="KING")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--random-seed", type=int, default=7)
    args = parser.parse_args(argv)
    browser, driver_path = find_browser()
    if not (browser and driver_path):
        parser.exit(2, "error: chromium and chromedriver are needed (make browser)\n")
    driver = start_chromium(browser, driver_path)
    try:
        with serving() as url:
            rates = []
            for repeat in range(args.repeats):
                rates.append(measure(driver, url, seed=args.seed, length=args.length,
                                     temperature=args.temperature, top_k=args.top_k,
                                     random_seed=args.random_seed))
                print(f"repeat {repeat + 1}: {rates[-1]:,.0f} chars/s", flush=True)
        version = driver.capabilities.get("browserVersion", "?")
    finally:
        driver.quit()
    print(f"median {statistics.median(rates):,.0f} chars/s over {args.repeats} generations of "
          f"{args.length} characters (headless Chromium {version})")


if __name__ == "__main__":
    main()
