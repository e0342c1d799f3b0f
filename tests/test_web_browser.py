"""`kata web` in a real browser (Debian's chromium, driven by Selenium through its
chromedriver) over a store filled by real runs on real containerd: a failure, a cached
run, a service step, a secret step, a matrix, a changed input. Screenshots of each page
go to the test's tmp_path."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fakes import FakeStep, write_pipeline
from support.cli import ROOT, KataProcess

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"
SECRET = "hunter2-web-secret-value"
SERVE = "trap 'exit 0' TERM; nc -ll -p 5432 -e echo pong & wait"


class WebServer:
    """``kata web`` as a process on a free port; ``url`` once it listens."""

    def __init__(self, store: Path, *args: str) -> None:
        env = dict(os.environ, KATA_STORE=str(store), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "kata", "web", "--port", "0", *args],
                                     env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        found = re.search(r"serving (https?://\S+/)", line)
        assert found, line + self.proc.stderr.read()
        self.url = found.group(1)

    def get(self, path: str, headers: dict | None = None,
            context: ssl.SSLContext | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.url + path.lstrip("/"), headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30, context=context) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1300,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def filled(tmp_path_factory, containerd_daemon, runtime):
    """A store with three runs of one pipeline: the first (the secret given) with a step
    failing, the second cached but for the failing step, the third after an input edit."""
    base = tmp_path_factory.mktemp("web")
    repo = base / "repo"
    repo.mkdir()
    (repo / "x").write_text("one\n")
    kata = KataProcess(repo, store=base / "store", address=containerd_daemon.address)
    db = {"name": "db", "image": IMAGE, "commands": ["echo db-up", SERVE],
          "ready": {"tcp": 5432, "timeout": "20s"}}
    write_pipeline(repo, [
        FakeStep("build", inputs=("x",), artifacts=("out/",), commands=(
            "mkdir -p out && cp x out/",
            r"printf '\033[32mgreen build line\033[0m\n'",
            r"printf 'progress 10%%\rprogress 100%%\n'")),
        FakeStep("test", depends_on=("build",), inputs=("x",), matrix={"V": ["a", "b"]},
                 commands=("cat out/x", "echo testing $V")),
        FakeStep("svc", inputs=("x",), services=(db,), commands=("nc db 5432 </dev/null",)),
        FakeStep("publish", inputs=("x",), secrets=("TOKEN",),
                 commands=('echo "token is $TOKEN"',)),
        FakeStep("lint", inputs=("x",), commands=("echo lint says no", "exit 3")),
    ], name="webdemo", settings={"fail_fast": False})
    runs = []
    for edit in (None, None, "two\n"):
        if edit is not None:
            (repo / "x").write_text(edit)
        proc = kata("run", "--json", "--secret", f"TOKEN={SECRET}", TOKEN="")
        assert proc.returncode == 1, proc.stdout + proc.stderr  # lint fails every time
        assert SECRET not in proc.stdout
        done = [json.loads(line) for line in proc.stdout.splitlines()
                if '"event": "done"' in line]
        runs.append(done[-1]["run_id"])
    return base / "store", runs, kata


def _shot(driver, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / f"{name}.png"))
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_each_page_shows_the_runs(filled, browser, tmp_path):
    from selenium.webdriver.common.by import By

    store, (first, second, third), _ = filled
    web = WebServer(store)
    try:
        # Runs: newest first, with their counts; the status filter
        browser.get(web.url)
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.run")
        assert [r.get_attribute("data-run") for r in rows] == [third, second, first]
        cells = [c.text for c in rows[1].find_elements(By.TAG_NAME, "td")]
        assert cells[0] == "failed" and cells[2] == "webdemo"
        # the second run: lint and the secret step ran (a step with secrets never hits)
        assert cells[8:12] == ["2", "4", "1", "0"]
        _shot(browser, tmp_path, "runs")
        browser.get(web.url + "runs?status=passed")
        assert browser.find_elements(By.CSS_SELECTOR, "tr.run") == []

        # A run: the DAG's nodes and edges, the matrix, timeline bars, a log line, why
        browser.get(web.url + f"runs/{third}")
        nodes = {n.get_attribute("data-step"): n.get_attribute("class")
                 for n in browser.find_elements(By.CSS_SELECTOR, "svg.dag g.node")}
        assert set(nodes) == {"build", "test (V=a)", "test (V=b)", "svc", "publish", "lint"}
        assert "status-failed" in nodes["lint"] and "status-passed" in nodes["build"]
        assert "hit" not in nodes["build"]  # x changed: it ran
        edges = {(e.get_attribute("data-from"), e.get_attribute("data-to"))
                 for e in browser.find_elements(By.CSS_SELECTOR, "svg.dag path.edge")}
        assert edges == {("build", "test (V=a)"), ("build", "test (V=b)")}
        group = browser.find_element(By.CSS_SELECTOR, "svg.dag g.matrix-group")
        assert group.get_attribute("data-group") == "test"
        bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.bar.phase-running")
        assert len(bars) == 6
        # preparing (workspace, image) before each container: the runtime's running hook
        assert browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.bar.phase-pulling")
        critical = browser.find_elements(By.CSS_SELECTOR, "svg.timeline g.row.critical")
        assert critical, "a critical path is highlighted"
        build = browser.find_element(By.ID, "step-build")
        build.find_element(By.TAG_NAME, "summary").click()
        log = build.find_element(By.CSS_SELECTOR, "pre.log-text")
        assert "green build line" in log.text.splitlines()
        assert "progress 100%" in log.text.splitlines()  # \r collapsed
        green = log.find_element(By.XPATH, ".//span[contains(., 'green build line')]")
        assert "color" in green.get_attribute("style")  # the ANSI colour, rendered
        why = build.find_element(By.CSS_SELECTOR, ".why").text
        assert "input file x" in why, why
        lint = browser.find_element(By.ID, "step-lint")
        assert "exit 3" in lint.text and "lint says no" in lint.text  # a failure's log is open
        browser.execute_script("window.scrollTo(0, 0);")
        _shot(browser, tmp_path, "run")

        # The cached run: hits marked in the DAG
        browser.get(web.url + f"runs/{second}")
        hits = browser.find_elements(By.CSS_SELECTOR, "svg.dag g.node.hit")
        assert {h.get_attribute("data-step") for h in hits} == \
            {"build", "test (V=a)", "test (V=b)", "svc"}
        _shot(browser, tmp_path, "run-cached")

        # Cache: today's hit rate bar, the store's size, the step missing most
        browser.get(web.url + "cache")
        bars = [b for b in browser.find_elements(By.CSS_SELECTOR, "svg.hit-rate rect.hit-bar")
                if b.get_attribute("data-rate")]
        assert bars and 0 < float(bars[-1].get_attribute("data-rate")) < 1
        assert browser.find_elements(By.CSS_SELECTOR, "svg.store-size polyline.size-line")
        missers = browser.find_element(By.CSS_SELECTOR, "table.missers").text
        assert "lint" in missers
        _shot(browser, tmp_path, "cache")
    finally:
        web.stop()


def test_secrets_never_appear_in_pages_or_the_api(filled):
    store, runs, _ = filled
    web = WebServer(store)
    try:
        bodies = []
        for path in ["/", "/cache", "/api/runs", "/api/cache",
                     *(f"/runs/{r}" for r in runs), *(f"/api/runs/{r}" for r in runs),
                     *(f"/api/runs/{r}/log/{s}" for r in runs for s in ("publish", "build"))]:
            status, body = web.get(path)
            assert status == 200, (path, body)
            bodies.append(body)
        assert not any(SECRET in b for b in bodies)
        log = json.loads(web.get(f"/api/runs/{runs[0]}/log/publish")[1])
        assert "token is ***" in log["text"].splitlines()
        doc = json.loads(web.get(f"/api/runs/{runs[2]}")[1])
        assert doc["version"] == 1 and doc["run"]["status"] == "failed"
        by_name = {s["name"]: s for s in doc["steps"]}
        assert by_name["test (V=a)"]["needs"] == ["build"]
        assert by_name["build"]["phases"] is not None and by_name["build"]["why"]
        assert by_name["svc"]["services"] == ["db"]
        # a step with secrets is never cached: its second run ran the same derivation
        again = {s["name"]: s for s in json.loads(web.get(f"/api/runs/{runs[1]}")[1])["steps"]}
        assert "same derivation" in again["publish"]["why"][0]
        assert again["build"]["hit"] and again["build"]["why"] is None
    finally:
        web.stop()


def test_other_addresses_need_a_token(filled, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store, runs, kata = filled
    refused = kata("web", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2 and "--token" in refused.stderr
    short = tmp_path / "short"
    short.write_text("abc\n")
    bad = kata("web", "--host", "0.0.0.0", "--port", "0", "--token", str(short))
    assert bad.returncode == 2 and "16 characters" in bad.stderr
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    web = WebServer(store, "--host", "0.0.0.0", "--token", str(token))
    web.url = web.url.replace("0.0.0.0", "127.0.0.1")
    try:
        assert "plain http" in web.proc.stderr.readline()  # the token would cross in the clear
        assert web.get("/api/runs")[0] == 401
        status, body = web.get("/api/runs", {"Authorization": "Bearer " + "0" * 32})
        assert status == 401
        status, body = web.get("/api/runs", {"Authorization":
                                             "Bearer 0123456789abcdef0123456789abcdef"})
        assert status == 200 and runs[0] in body
        browser.delete_all_cookies()
        browser.get(web.url + "runs")
        assert browser.current_url.endswith("/login")
        field = browser.find_element(By.NAME, "token")
        field.send_keys("0123456789abcdef0123456789abcdef")
        field.submit()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "tr.run")) == 3
        assert browser.current_url.rstrip("/") == web.url.rstrip("/")
        _shot(browser, tmp_path, "after-login")
    finally:
        web.stop()
        browser.delete_all_cookies()


def test_tls_serves_https_and_its_login_cookie_is_secure(filled, tmp_path):
    """--tls-cert/--tls-key serve https (a client trusting the certificate gets the API,
    plain http gets nothing); /login's cookie is then Secure. Bad pairs exit 2 naming the
    file, before anything listens."""
    import httpx

    from test_remote_cas import _self_signed

    store, runs, kata = filled
    key, cert = _self_signed(tmp_path)
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    web = WebServer(store, "--host", "127.0.0.1", "--token", str(token),
                    "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert web.url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(cert))
        status, body = web.get("/api/runs", {"Authorization":
                                             "Bearer 0123456789abcdef0123456789abcdef"},
                               context=trusting)
        assert status == 200 and runs[0] in body
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            web.get("/api/runs", context=ssl.create_default_context())
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(web.url.replace("https://", "http://") + "api/runs",
                                   timeout=30).read()
        with httpx.Client(verify=trusting, timeout=30) as client:
            resp = client.post(web.url + "login",
                               content=b"token=0123456789abcdef0123456789abcdef",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status_code == 303
        cookie = resp.headers["set-cookie"].lower()
        assert "kata_token=" in cookie and "; secure" in cookie and "httponly" in cookie
    finally:
        web.stop()

    (tmp_path / "other").mkdir()
    other_key, _ = _self_signed(tmp_path / "other")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True)
    for args, named in ((["--tls-cert", str(cert)], "--tls-key"),
                        (["--tls-key", str(key)], "--tls-cert"),
                        (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)],
                         "nope.pem"),
                        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "other"),
                        (["--tls-cert", str(cert), "--tls-key", str(encrypted)],
                         "unencrypted"),
                        (["--tls-cert", str(token), "--tls-key", str(key)], "token")):
        proc = kata("web", "--port", "0", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert named in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_a_run_in_progress_shows_its_lines_as_they_come(tmp_path, containerd_daemon, runtime,
                                                        browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    repo = tmp_path / "repo"
    repo.mkdir()
    write_pipeline(repo, [FakeStep("slow", inputs=("x",), commands=(
        "echo first-line", "sleep 4", "echo second-line-live", "sleep 4")),
        FakeStep("after", depends_on=("slow",), inputs=("x",), commands=("sleep 3",))],
        name="slowdemo")
    (repo / "x").write_text("x\n")
    store = tmp_path / "store"
    env = dict(os.environ, KATA_STORE=str(store), PYTHONPATH=str(ROOT))
    run = subprocess.Popen([sys.executable, "-m", "kata", "--containerd",
                            containerd_daemon.address, "run", "--json"], cwd=repo, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    web = WebServer(store)
    try:
        run_id = ""
        deadline = time.monotonic() + 60
        while not run_id and time.monotonic() < deadline:
            live = json.loads(web.get("/api/runs")[1])["live"]
            run_id = live[0]["run_id"] if live else ""
            time.sleep(0.1)
        assert run_id, "the run shows as in progress"
        browser.get(web.url + f"runs/{run_id}")
        browser.execute_script("window.keptAcrossUpdates = 42;")
        log = browser.find_element(By.ID, "live-log")
        WebDriverWait(browser, 60).until(lambda d: "first-line" in log.text)
        assert "second-line-live" not in log.text
        state = browser.find_element(By.CSS_SELECTOR, "#live-steps tr[data-step='slow'] .state")
        assert state.text == "running"
        # the DAG, drawn from the plan, recoloured from the events
        node = browser.find_element(By.CSS_SELECTOR, "#live-dag svg.dag g.node[data-step='slow']")
        assert "status-running" in node.get_attribute("class").split()
        after = browser.find_element(By.CSS_SELECTOR,
                                     "#live-dag svg.dag g.node[data-step='after']")
        assert after.get_attribute("class").split()[1] in ("status-pending", "status-queued")
        assert browser.find_elements(By.CSS_SELECTOR,
                                     "#live-dag path.edge[data-from='slow'][data-to='after']")
        # the timeline: slow's running bar, growing as time goes
        bar = "#live-timeline g.row[data-step='slow'] rect[data-phase='running']"

        def running_width(d) -> float:  # noqa: ANN001
            found = d.find_elements(By.CSS_SELECTOR, bar)
            return float(found[0].get_attribute("width")) if found else 0.0

        WebDriverWait(browser, 10).until(lambda d: running_width(d) > 0)
        first_width = running_width(browser)
        _shot(browser, tmp_path, "live-first")
        WebDriverWait(browser, 60).until(lambda d: "second-line-live" in log.text)
        assert running_width(browser) > first_width
        assert browser.execute_script("return window.keptAcrossUpdates;") == 42  # no reload
        _shot(browser, tmp_path, "live-second")
        WebDriverWait(browser, 60).until(lambda d: "status-passed" in d.find_element(
            By.CSS_SELECTOR, "#live-dag g.node[data-step='slow']").get_attribute("class"))
        assert browser.execute_script("return window.keptAcrossUpdates;") == 42
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, out + err
        # once over, the page shows the recorded run
        WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "svg.dag g.node"))
        assert not list(store.glob("local/live/*.jsonl"))  # the journal is gone
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        web.stop()
