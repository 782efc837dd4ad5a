"""The web page (charrnn/web/, docs/WEB.md) in headless Chromium: the same numbers as the
NumPy reference (logits and states within 1e-4; greedy text, warm and cold, and seeded
sampled text equal to the CLI's), every cell from a picked file (a GRU trained by
PyTorch), the controls and URL parameters, stopping, a clear message for a bad file with
nothing on the console, the neuron view, a dropped file, the `model` URL parameter,
`charrnn serve` and a static host.

One browser and one server for the module, on one xdist worker. Chromium and
chromedriver come from `make browser` (Debian's chromium and chromium-driver); without
them the tests are skipped, except under CI, where they fail.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from benchmarks.web_speed import find_browser, serving, start_chromium, wait_for_state
from charrnn.common.config import PRETRAINED_MODELS, ModelConfig, OptimConfig
from charrnn.common.generate import Generator
from charrnn.common.paths import PRETRAINED_PATH, ROOT
from charrnn.common.text import Vocab
from charrnn.common.weights import init_weights, load_portable, save_portable
from charrnn.frameworks.numpy_model import NumpyCharRNN
from tests.cli_cases import run_cases
from tests.conftest import CURRENT_ENV, TEXT, TINY

pytestmark = [pytest.mark.xdist_group("web"),
              pytest.mark.skipif(CURRENT_ENV != "modern",
                                 reason="the browser tests run in the modern environment")]

TOLERANCE = 1e-4  # logits and states, JavaScript (float64 dot products) against NumPy
TRACE_TEXT = 'KING HENRY:\nSay (for he is near) "we come in peace,"\nand bid him look.\n'
RESULTS = ROOT / "test-results"  # the screenshot (ignored by git)


@pytest.fixture(scope="module")
def url():
    with serving() as page:
        yield page


@pytest.fixture(scope="module")
def driver():
    pytest.importorskip("selenium")
    browser, chromedriver = find_browser()
    if not (browser and chromedriver):
        reason = "chromium and chromedriver are not installed (make browser)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the browser tests")
        pytest.skip(reason)
    driver = start_chromium(browser, chromedriver)
    yield driver
    driver.quit()


def console_errors(driver) -> list[dict]:
    """The page's console entries at level SEVERE since the last call (errors, uncaught
    exceptions, failed loads)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(driver, url: str, **params) -> str:
    """Load the page with URL parameters; wait until it has settled; return its state."""
    driver.get(f"{url}?{urllib.parse.urlencode(params)}" if params else url)
    return wait_for_state(driver)


def text_of(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def act(driver, action) -> str:
    """Run `action` (a click, a file picked) and wait for the page to settle after it."""
    driver.execute_script("document.body.dataset.state = 'test'")
    action()
    return wait_for_state(driver)


def pick_file(driver, path) -> str:
    return act(driver, lambda: driver.find_element("id", "model-file").send_keys(str(path)))


def cli_text(*args: str) -> str:
    """What `numpy_model.py generate` prints on stdout (in-process), the final newline off."""
    [result] = run_cases(NumpyCharRNN, [{"argv": ["generate", *args]}])
    assert result["code"] == 0, result["stderr"]
    assert result["stdout"].endswith("\n")
    return result["stdout"][:-1]


def reference_trace(path, text: str, cold_start: bool) -> dict[str, np.ndarray]:
    """The NumPy reference's logits (T, V) and states h, c (T, num_layers * rnn_size) after
    each character of `text`, from the state generation starts from."""
    portable = load_portable(path)
    model = NumpyCharRNN(portable.config, portable.weights, OptimConfig())
    state = Generator(model, portable.vocab, warm_start=not cold_start).warm_state()
    rows = {"logits": [], "h": [], "c": []}
    for i in portable.vocab.encode(text):
        logits, state = model.step(np.array([i], np.int32), state)
        rows["logits"].append(logits[0])
        rows["h"].append(state[0][:, 0].ravel())  # (num_layers, 1, H) -> layer-major
        rows["c"].append(state[1][:, 0].ravel())
    return {name: np.array(a) for name, a in rows.items()}


def assert_trace_matches(driver, path, text: str = TRACE_TEXT, cold_start: bool = False):
    page = driver.execute_script("return charrnn.trace(arguments[0], arguments[1])", text,
                                 cold_start)
    expected = reference_trace(path, text, cold_start)
    for name, want in expected.items():
        got = np.array(page[name], dtype=np.float64)
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() < TOLERANCE, (name, np.abs(got - want).max())


def test_uniforms_are_numpys(driver, url):
    """The page's generator is NumPy's default_rng: the warm-up's draws (seed 0) and a
    random_seed's are the same doubles."""
    assert open_page(driver, url) == "ready"
    for seed in (0, 7, 2**40 + 5):
        page = driver.execute_script("return charrnn.uniforms(arguments[0], 5)", seed)
        assert page == np.random.default_rng(seed).random(5).tolist()


@pytest.mark.parametrize("cold_start", [False, True], ids=["warm", "cold"])
def test_logits_and_states_equal_the_references(driver, url, cold_start):
    assert open_page(driver, url) == "ready"
    assert_trace_matches(driver, PRETRAINED_PATH, cold_start=cold_start)
    assert console_errors(driver) == []


@pytest.mark.parametrize("cold_start", [False, True], ids=["warm", "cold"])
def test_greedy_text_from_url_parameters_is_the_clis(driver, url, cold_start):
    """`run=1` with the CLI's flag names generates on load into <pre id="output">, the
    text `numpy_model.py generate --temperature 0` prints, character for character."""
    args = {"seed": "ROMEO:", "length": 300, "temperature": 0}
    flags = ["--cold-start"] if cold_start else []
    params = {**args, "run": 1, **({"cold_start": 1} if cold_start else {})}
    assert open_page(driver, url, **params) == "done"
    expected = cli_text("--checkpoint-path", str(PRETRAINED_PATH), "--seed", "ROMEO:",
                        "--length", "300", "--temperature", "0", *flags)
    assert text_of(driver, "output") == expected
    assert driver.find_element("id", "length").get_property("value") == "300"
    assert driver.find_element("id", "cold-start").is_selected() == cold_start
    speed = text_of(driver, "speed")
    assert re.match(r"generated 300 characters in [\d.]+ s \([\d,]+ chars/s", speed), speed
    assert console_errors(driver) == []


def test_shipped_models_by_name_are_the_clis(driver, url):
    """The page's shipped models are PRETRAINED_MODELS, by the same names: `model=large`
    (and its button) loads the large one, whose greedy text is `generate --model large`'s."""
    source = (ROOT / "charrnn" / "web" / "app.js").read_text()
    files = dict(re.findall(r'^\s+(\w+): "([\w.-]+\.safetensors)",$', source, re.M))
    assert files == PRETRAINED_MODELS
    assert open_page(driver, url, model="large", seed="KING", length=120, temperature=0,
                     run=1) == "done"
    assert text_of(driver, "model-source").startswith(
        f"Using the shipped large model pretrained/{PRETRAINED_MODELS['large']} (trained by ")
    expected = cli_text("--model", "large", "--seed", "KING", "--length", "120",
                        "--temperature", "0")
    assert text_of(driver, "output") == expected
    assert act(driver, driver.find_element("id", "load-shipped").click) == "ready"
    assert "pretrained/tinyshakespeare.safetensors" in text_of(driver, "model-source")
    assert console_errors(driver) == []


def test_controls_sample_the_clis_text_for_the_same_random_seed(driver, url):
    """Temperature, top-k, top-p and the random seed typed into the controls: NumPy's
    generator and the CLI's sampling make the CLI's text (not required by docs/WEB.md,
    which promises only greedy equality, but true for the shipped model)."""
    assert open_page(driver, url) == "ready"
    for element_id, value in {"seed": "JULIET:", "length": "200", "temperature": "0.8",
                              "top-k": "5", "top-p": "0.9", "random-seed": "11"}.items():
        field = driver.find_element("id", element_id)
        field.clear()
        field.send_keys(value)
    assert act(driver, driver.find_element("id", "generate").click) == "done"
    expected = cli_text("--checkpoint-path", str(PRETRAINED_PATH), "--seed", "JULIET:",
                        "--length", "200", "--temperature", "0.8", "--top-k", "5",
                        "--top-p", "0.9", "--random-seed", "11")
    assert text_of(driver, "output") == expected


def test_stop_ends_a_long_generation(driver, url):
    assert open_page(driver, url, length=1_000_000) == "ready"
    driver.execute_script("document.body.dataset.state = 'test'")
    driver.find_element("id", "generate").click()
    wait_for_state(driver, ("generating",))
    driver.find_element("id", "stop").click()
    assert wait_for_state(driver) == "done"
    assert text_of(driver, "speed").startswith("stopped after")
    assert len(text_of(driver, "output")) < 1_000_000


def test_bad_settings_are_a_message(driver, url):
    assert open_page(driver, url, seed="KING\u00e9", run=1) == "error"
    assert "outside the model's vocabulary" in text_of(driver, "message")
    assert open_page(driver, url, top_p=0, run=1) == "error"
    assert text_of(driver, "message") == "top_p 0: must be in (0, 1]"
    assert console_errors(driver) == []


@pytest.fixture(scope="module")
def gru_file(tmp_path_factory) -> str:
    """A one-layer GRU of 16 units trained 5 steps by PyTorch: its portable file."""
    tmp = tmp_path_factory.mktemp("gru")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "pytorch_model.py", "train", "--cell", "gru", "--num-layers", "1",
         "--max-steps", "5", "--text-path", str(corpus), "--checkpoint-path", str(tmp / "gru"),
         "--log-path", str(tmp / "gru.log"), *TINY],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "not installed" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(tmp / "gru" / "model.safetensors")


def test_a_gru_trained_by_pytorch_from_the_file_input(driver, url, gru_file):
    """A user-picked portable file from another framework: its config and training shown,
    its numbers and greedy text the reference's."""
    path = gru_file
    assert open_page(driver, url) == "ready"
    assert pick_file(driver, path) == "ready"
    source = text_of(driver, "model-source")
    assert "model.safetensors (trained by pytorch" in source and "(step 5)" in source, source
    info = text_of(driver, "model-info")
    assert "cellgru" in info and "layers1" in info and "rnn_size16" in info, info
    assert_trace_matches(driver, path, cold_start=True)
    assert_trace_matches(driver, path, cold_start=False)
    driver.find_element("id", "length").clear()
    driver.find_element("id", "length").send_keys("150")
    driver.find_element("id", "temperature").clear()
    driver.find_element("id", "temperature").send_keys("0")
    driver.find_element("id", "seed").clear()
    driver.find_element("id", "seed").send_keys("All:")
    assert act(driver, driver.find_element("id", "generate").click) == "done"
    assert text_of(driver, "output") == cli_text("--checkpoint-path", path, "--seed", "All:",
                                                 "--length", "150", "--temperature", "0")
    assert console_errors(driver) == []


def test_a_file_dropped_on_the_page(driver, url):
    """A drop anywhere on the page loads the file (the drop built in the page: WebDriver
    cannot drag a file from the desktop)."""
    assert open_page(driver, url) == "ready"
    assert act(driver, lambda: driver.execute_script("""
        fetch("../pretrained/tinyshakespeare.safetensors").then((r) => r.arrayBuffer())
          .then((bytes) => {
            const drop = new DataTransfer();
            drop.items.add(new File([bytes], "dropped.safetensors"));
            document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: drop,
              bubbles: true, cancelable: true }));
          });""")) == "ready"
    assert text_of(driver, "model-source").startswith("Using dropped.safetensors (trained by")


@pytest.fixture
def file_host(tmp_path):
    """tmp_path served on another port, with the CORS header a cross-origin fetch needs."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            super().end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_model_url_parameter(driver, url, tmp_path, file_host):
    vocab = Vocab(sorted(set(TEXT)))
    config = ModelConfig(vocab_size=vocab.size, embedding_size=5, rnn_size=9, cell="rnn")
    save_portable(tmp_path / "rnn.safetensors", init_weights(config, seed=1), config, vocab)
    params = {"seed": "All:", "length": 40, "temperature": 0, "run": 1}
    assert open_page(driver, url, model=file_host + "rnn.safetensors", **params) == "done"
    assert text_of(driver, "output") == cli_text(
        "--checkpoint-path", str(tmp_path / "rnn.safetensors"), "--seed", "All:",
        "--length", "40", "--temperature", "0")
    assert console_errors(driver) == []
    assert open_page(driver, url, model=file_host + "missing.safetensors") == "error"
    assert text_of(driver, "message") == (f"{file_host}missing.safetensors: HTTP 404 "
                                          "File not found")
    console_errors(driver)  # the browser's own line for the 404 is expected here


@pytest.mark.parametrize("cell,num_layers", [("rnn", 3), ("gru", 2), ("lstm", 1)])
def test_every_cell_and_depth(driver, url, tmp_path, cell, num_layers):
    """Untrained weights of each cell at other sizes, from a corpus vocabulary."""
    vocab = Vocab(sorted(set(TEXT)))
    config = ModelConfig(vocab_size=vocab.size, embedding_size=7, rnn_size=12,
                         num_layers=num_layers, cell=cell)
    path = tmp_path / f"{cell}.safetensors"
    save_portable(path, init_weights(config, seed=3), config, vocab, framework="numpy")
    assert open_page(driver, url) == "ready"
    assert pick_file(driver, path) == "ready"
    assert_trace_matches(driver, path, text="First Citizen:\nSpeak, speak.\n")
    assert_trace_matches(driver, path, text="All:\nResolved.", cold_start=True)


def test_bad_files_are_a_message_and_no_console_error(driver, url, tmp_path):
    """A corrupt file, a truncated one, a safetensors file that is not portable and one
    whose shapes do not fit its config: one clear line each, the model in use kept."""
    import safetensors.numpy

    shipped = PRETRAINED_PATH.read_bytes()
    bad = {"garbage.safetensors": (b"\x07not a model at all", "not a readable .safetensors"),
           "truncated.safetensors": (shipped[:len(shipped) // 2], "do not fit the file")}
    for name, (data, _) in bad.items():
        (tmp_path / name).write_bytes(data)
    safetensors.numpy.save_file({"x": np.zeros(3, np.float32)},
                                str(tmp_path / "plain.safetensors"))
    bad["plain.safetensors"] = (None, "missing metadata")
    portable = load_portable(PRETRAINED_PATH)
    weights = dict(portable.weights, **{"dense.b": np.zeros(5, np.float32)})
    safetensors.numpy.save_file(weights, str(tmp_path / "shapes.safetensors"),
                                metadata=portable.metadata)
    bad["shapes.safetensors"] = (None, "dense.b has shape (5), the config needs (98)")
    assert open_page(driver, url) == "ready"
    for name, (_, words) in bad.items():
        assert pick_file(driver, tmp_path / name) == "error"
        message = text_of(driver, "message")
        assert message.startswith(f"{name}: ") and words in message, message
        assert "shipped pretrained model" in text_of(driver, "model-source")
    assert console_errors(driver) == []


def test_neuron_view_colours_ranks_and_explains(driver, url):
    """Every character coloured by the chosen unit, units ranked by a feature, the next
    characters' probabilities on hover; the screenshot goes to test-results/web.png."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    assert open_page(driver, url, seed="KING", length=400, random_seed=7, run=1) == "done"
    driver.find_element("id", "use-output").click()
    spans = driver.find_elements("css selector", "#neurons span")
    assert len(spans) == len(text_of(driver, "output"))
    Select(driver.find_element("id", "feature")).select_by_value("column")
    units = driver.find_elements("css selector", "#units button")
    assert len(units) == 10 and all(re.search(r"r = -?[01]\.\d\d$", u.text) for u in units)
    units[1].click()
    layer, unit, kind = re.match(r"layer (\d+), unit (\d+), (\w)", units[1].text).groups()
    assert driver.find_element("id", "unit").get_property("value") == unit
    colours = {s.value_of_css_property("background-color") for s in spans[:80]}
    assert len(colours) > 10  # the activation varies along the text
    driver.execute_script("document.getElementById('neuron-section').scrollIntoView()")
    ActionChains(driver).move_to_element(spans[120]).perform()
    tooltip = driver.find_element("id", "tooltip")
    assert tooltip.is_displayed()
    assert re.match(r'after ".*" \(activation -?\d\.\d{3}\): (".+" \d+\.\d%, ){4}', tooltip.text)
    RESULTS.mkdir(exist_ok=True)  # docs/web.png is this picture in 256 colours
    driver.save_screenshot(str(RESULTS / "web.png"))
    assert console_errors(driver) == []


def test_dump_dom_shows_the_generated_text(driver, url):
    """`chromium --headless --dump-dom` with a virtual time budget (docs/WEB.md): the text
    is in the dumped document."""
    browser, _ = find_browser()
    page = f"{url}?seed=KING&length=50&temperature=0&run=1"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=60000", "--dump-dom", page],
                          capture_output=True, text=True, timeout=120)
    expected = cli_text("--checkpoint-path", str(PRETRAINED_PATH), "--seed", "KING",
                        "--length", "50", "--temperature", "0")
    assert f'<pre id="output">{expected}</pre>' in proc.stdout, proc.stdout[-2000:]


def test_the_page_works_from_a_static_host_of_the_repository(driver):
    """Relative paths only: the repository served as plain files, the page at
    /charrnn/web/ finds the shipped model."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = f"http://127.0.0.1:{server.server_address[1]}/charrnn/web/index.html"
        assert open_page(driver, page, length=20, temperature=0, run=1) == "done"
        assert "shipped pretrained model" in text_of(driver, "model-source")
        assert console_errors(driver) == []
    finally:
        server.shutdown()
        server.server_close()


def test_charrnn_serve_prints_its_address_serves_the_page_and_refuses_a_taken_port():
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        match = re.match(r"serving the char-rnn page at (http://127\.0\.0\.1:\d+/web/) ", line)
        assert match, line
        page = match.group(1)
        with urllib.request.urlopen(page.removesuffix("web/")) as response:  # / redirects
            assert response.url == page and b'<pre id="output">' in response.read()
        with urllib.request.urlopen(urllib.parse.urljoin(
                page, "../pretrained/tinyshakespeare.safetensors")) as response:
            assert response.read() == PRETRAINED_PATH.read_bytes()
        with urllib.request.urlopen(urllib.parse.urljoin(page, "app.js")) as response:
            assert response.headers["Content-Type"] == "text/javascript"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(urllib.parse.urljoin(page, "../common/config.py"))
        port = urllib.parse.urlsplit(page).port
        taken = subprocess.run([sys.executable, "-m", "charrnn", "serve", "--port", str(port)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert taken.returncode == 2
        assert taken.stderr.startswith(f"charrnn serve: error: cannot listen on 127.0.0.1:{port} ")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
