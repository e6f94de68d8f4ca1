"""`kt console` and `/keeptrusts/ui` over real gateways: a plain GET (no JavaScript), the admin
token, masking and escaping, and a real headless Chromium reading what a person sees."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.control import console_data
from gateway.control.console_data import Filters, GatewayView, config_diffs, config_text, mask_config
from gateway.control.console_page import fragment
from tests.browser import CHROMIUM, Browser
from tests.gateway_process import GatewayProcess
from tests.gitserve import dlp_config
from tests.kt_process import run_kt
from tests.waiting import wait_for

TOKEN = "adm-tok-7f3a9c"
CONFIG = dlp_config(name="console-e2e")
XSS_USER = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class Console:
    """`python -m kt console` on a free port (printed on stderr at start)."""

    def __init__(self, *gateways: str) -> None:
        args = [a for url in gateways for a in ("--gateway", url)]
        env = {**os.environ, "KEEPTRUSTS_ADMIN_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "kt", "console", *args, "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        line = self.proc.stderr.readline().decode()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, f"kt console said: {line!r}"
        self.url = found.group(0)

    def get(self, query: str = "") -> str:
        with urllib.request.urlopen(self.url + query, timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith("text/html")
            return resp.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.proc.stderr.close()


@pytest.fixture
def fleet(tmp_path, gateway_process):
    """Two gateways on the same config (each its own file) with an admin token, and a console over both."""
    gateways = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        config = tmp_path / name / "policy-config.yaml"
        config.write_text(CONFIG)
        gw = gateway_process(config, state=tmp_path / name / "state", env={"KEEPTRUSTS_ADMIN_TOKEN": TOKEN})
        gw.config_path = config
        gateways.append(gw)
    console = Console(*(gw.url for gw in gateways))
    yield gateways, console
    console.stop()


def blocked_request(gw: GatewayProcess, user: str = "alice") -> None:
    body = {"model": "demo-model", "messages": [{"role": "user", "content": "about project-bluebird"}]}
    status, _, _ = gw.request("POST", "/v1/chat/completions", body, headers={"X-User-Id": user})
    assert status == 409
    wait_for(lambda: gw.get("/keeptrusts/events?verdict=block")[1]["count"] >= 1, timeout=10)


def change_config(gw: GatewayProcess) -> None:
    """Give one gateway a different config (a new pack version) and wait until it runs it."""
    tmp = gw.config_path.with_suffix(".tmp")
    tmp.write_text(CONFIG.replace("1.0.0", "1.1.0"))
    os.replace(tmp, gw.config_path)
    wait_for(lambda: gw.get("/keeptrusts/status")[1]["config"]["pack"]["version"] == "1.1.0", timeout=15)


# -- without JavaScript: a plain GET ----------------------------------------------------------------


def test_plain_get_shows_the_fleet_and_the_blocked_request_as_a_table(fleet):
    (a, b), console = fleet
    blocked_request(a, user=XSS_USER)
    page = console.get()
    fleet_table = page.split('<table id="fleet">')[1].split("</table>")[0]
    revision = a.get("/keeptrusts/status")[1]["config"]["revision"]
    assert fleet_table.count(f">{revision[:12]}</code>") == 2 and a.url in fleet_table and b.url in fleet_table
    assert "console-e2e 1.0.0" in fleet_table and "in sync" in fleet_table
    assert 'id="fleet-ok"' in page and "drift-banner" not in page
    decisions = page.split('<table id="decisions">')[1].split("</table>")[0]
    row = next(r for r in decisions.split("<tr") if "v-block" in r)
    assert "dlp-filter" in row and "demo-model" in row
    # what a client put in its user id is text, never markup
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;&lt;img src=x onerror=&quot;window.__xss=2&quot;&gt;" in row
    assert "<script>window.__xss" not in page and "<img src=x" not in page
    assert TOKEN not in page
    # the filters are query parameters the server applies
    assert "v-block" not in console.get("?fragment=1&verdict=allow")
    assert "v-block" in console.get("?fragment=1&verdict=block&policy=dlp-filter&window=6h")
    assert "v-block" not in console.get("?fragment=1&verdict=block&model=other-model")
    # an event's per-policy trace, by link
    event_id = a.get("/keeptrusts/events?verdict=block")[1]["events"][0]["id"]
    trace = console.get(f"?event={event_id}").split('id="trace"')[1]
    assert "dlp-filter" in trace and "block" in trace and "audit-logger" not in trace.split("</table>")[0].split(
        "dlp-filter")[0]


def test_plain_get_shows_the_disagreement_and_the_config_diff(fleet):
    (_, b), console = fleet
    change_config(b)
    page = console.get()
    banner = page.split('id="drift-banner"')[1].split("</div>")[0]
    assert "gateways disagree on the revision" in banner
    diff = page.split('id="config-diff"')[1].split("</div>")[0]
    assert "-  version: 1.0.0" in diff and "+  version: 1.1.0" in diff


def test_fragment_is_the_live_part_only(fleet):
    _, console = fleet
    part = console.get("?fragment=1")
    assert '<table id="fleet">' in part and "<html" not in part and "<form" not in part


def test_console_names_a_gateway_that_does_not_answer(tmp_path):
    console = Console("http://127.0.0.1:9/")
    try:
        page = console.get()
    finally:
        console.stop()
    assert "unreachable" in page and 'class="banner bad"' in page


# -- each gateway's own page ------------------------------------------------------------------------


def test_gateway_ui_needs_the_admin_token_and_a_browser_can_give_it(fleet):
    (a, _), _ = fleet
    status, headers, _ = a.request("GET", "/keeptrusts/ui", admin=False)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"admin:nope").decode()
    assert a.request("GET", "/keeptrusts/ui", admin=False, headers={"Authorization": f"Basic {wrong}"})[0] == 401
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    status, headers, body = a.request("GET", "/keeptrusts/ui", admin=False, headers={"Authorization": f"Basic {basic}"})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'nonce-" in headers["Content-Security-Policy"]
    page = body.decode()
    assert '<table id="fleet">' in page and "this gateway" in page and TOKEN not in page
    status, _, body = a.request("GET", "/keeptrusts/ui?fragment=1")  # Bearer works too
    assert status == 200 and b"<html" not in body


# -- what is shown of a config -----------------------------------------------------------------------


def test_config_view_masks_secret_refs_and_url_credentials():
    document = {"providers": {"targets": [{"id": "x", "base_url": "https://bob:hunter2@llm.example/v1",
                                           "secret_key_ref": {"env": "OPENAI_API_KEY"}}]},
                "sync": {"token_ref": {"store": "vault-name"}, "note": "see http://u:pw@host/"}}
    masked = mask_config(document)
    target = masked["providers"]["targets"][0]
    assert target["base_url"] == "https://***@llm.example/v1"
    assert target["secret_key_ref"] == {"env": "***"} and masked["sync"]["token_ref"] == {"store": "***"}
    text = config_text(GatewayView("g", config={"config": document}))
    for secret in ("hunter2", "bob", "OPENAI_API_KEY", "vault-name", "u:pw"):
        assert secret not in text
    html = fragment([GatewayView("g", config={"config": document})], Filters())
    assert "hunter2" not in html and "OPENAI_API_KEY" not in html


def test_config_diff_only_when_configs_differ():
    one = GatewayView("a", config={"config": {"pack": {"version": "1.0.0"}}})
    same = GatewayView("b", config={"config": {"pack": {"version": "1.0.0"}}})
    other = GatewayView("c", config={"config": {"pack": {"version": "2.0.0"}}})
    assert config_diffs([one, same]) == []
    [(base, name, lines)] = config_diffs([one, same, other])
    assert (base, name) == ("a", "c") and "+  version: 2.0.0" in lines


# -- in a real browser ----------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    b = Browser.start(tmp_path / "chromium")
    yield b
    b.close()


@needs_browser
def test_browser_drift_banner_appears_live_when_a_gateway_gets_another_config(fleet, browser):
    (_, b), console = fleet
    browser.goto(console.url)
    assert "All gateways agree" in browser.text("#fleet-ok")
    assert browser.text("#drift-banner") == ""
    change_config(b)
    # no reload by us: the page's own refresh brings the banner
    browser.wait_until("!!document.querySelector('#drift-banner')", timeout=30)
    assert "gateways disagree on the revision" in browser.text("#drift-banner")
    assert "version: 1.1.0" in browser.text("#config-diff")
    assert browser.evaluate("location.href") == console.url


@needs_browser
def test_browser_blocked_request_shows_under_block_with_its_policy(fleet, browser):
    (a, _), console = fleet
    blocked_request(a, user=XSS_USER)
    browser.goto(console.url)
    browser.evaluate("document.querySelector('select[name=verdict]').value = 'block';"
                     "document.querySelector('#filters').submit()")
    browser.wait_until("location.search.includes('verdict=block') && document.readyState === 'complete'"
                       " && !!document.querySelector('#decisions tr.v-block')")
    cells = browser.evaluate("[...document.querySelector('#decisions tr.v-block').cells].map(c => c.innerText)")
    assert cells[1] == "block" and cells[2] == "dlp-filter" and cells[4] == "demo-model"
    assert cells[6] == XSS_USER  # the user id is shown as the text it is
    assert browser.evaluate("window.__xss === undefined")
    # a click shows that event's per-policy trace (the script fetches it; no page load)
    browser.evaluate("window.__same_page = true; document.querySelector('#decisions tr.v-block a.evt').click()")
    browser.wait_until("!!document.querySelector('#trace-table')")
    trace = browser.evaluate("[...document.querySelectorAll('#trace-table tbody tr')].map(r => r.innerText)")
    assert any("dlp-filter" in row and "block" in row for row in trace)
    assert browser.evaluate("window.__same_page === true")


@needs_browser
def test_browser_page_renders_at_1280_and_on_a_phone(fleet, browser, tmp_path):
    (a, _), console = fleet
    blocked_request(a)
    a.chat("hello")
    browser.goto(console.url)
    shot = browser.screenshot(tmp_path / "console-1280.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert browser.evaluate("document.querySelectorAll('svg.chart').length") == 2
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    browser.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
    browser.goto(console.url)
    assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert browser.text("#fleet").count("console-e2e") == 2
    phone = browser.screenshot(tmp_path / "console-phone.png")
    assert phone.stat().st_size > 10_000
    if os.environ.get("KT_CONSOLE_SCREENSHOTS"):  # keep them to look at: KT_CONSOLE_SCREENSHOTS=/some/dir
        for path in (shot, phone):
            Path(os.environ["KT_CONSOLE_SCREENSHOTS"], path.name).write_bytes(path.read_bytes())


def test_no_console_route_without_a_gateway_url():
    result = run_kt("console")
    assert result.returncode == 1 and "--gateway" in result.stderr


def test_unknown_path_of_the_console_is_404(fleet):
    _, console = fleet
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(console.url + "nope", timeout=10)
    assert info.value.code == 404


def test_policy_counts_are_per_request_and_latency_percentiles_per_slice():
    from gateway.control.console_charts import Charts, policy_counts

    both = [{"policy": "dlp-filter", "phase": "input", "verdict": "allow"},
            {"policy": "dlp-filter", "phase": "output", "verdict": "allow"},
            {"policy": "pii-detector", "phase": "input", "verdict": "redact", "redactions": 2}]
    blocked = [{"policy": "dlp-filter", "phase": "input", "verdict": "block"}]
    counts = {c.policy: c for c in policy_counts([{"policies": both}, {"policies": blocked}])}
    assert (counts["dlp-filter"].requests, counts["dlp-filter"].blocks) == (2, 1)
    assert (counts["pii-detector"].requests, counts["pii-detector"].redactions) == (1, 2)
    f = Filters()
    numbers = Charts()
    numbers.add_events([{"_ts": f.since + 10, "latency_ms": ms} for ms in (1, 2, 3, 100)], f.since, 3600)
    [(index, p50, p99)] = numbers.latency_series()
    assert index == 0 and abs(p50 - 2) <= 2 * 0.0906 and abs(p99 - 100) <= 100 * 0.0906


def test_charts_say_which_part_covers_only_the_newest_events():
    from gateway.control.console_charts import charts

    f = Filters()
    summary = {"requests": 5000, "verdicts": {"allow": 4000, "block": 1000}, "redactions": 0, "rollups_since": 1.0,
               "policies": [{"policy": "dlp-filter", "requests": 5000, "blocks": 1000, "redactions": 0}],
               "series": [{"slice": 3, "requests": 5000, "histogram": {"40": 5000}}]}
    events = [{"gateway": "old", "verdict": "block", "_ts": f.since + 5, "latency_ms": 3.0,
               "policies": [{"policy": "dlp-filter", "verdict": "block"}]}]
    views = [GatewayView("new", status={}, summary=summary), GatewayView("old", status={})]
    numbers = charts(views, events, f, 1000)
    assert numbers.requests == 5001 and numbers.verdicts == {"allow": 4000, "block": 1001}
    assert [(r.policy, r.requests, r.blocks) for r in numbers.policy_rows()] == [("dlp-filter", 5001, 1001)]
    assert not numbers.whole and numbers.notes == [
        "old gave no summary (an older kt, or its event store is not open): its part covers only its newest "
        "1,000 events in the window."]
    html = fragment(views, f)
    assert 'id="chart-scope"' in html and "only its newest 1,000 events" in html
    assert charts(views[:1], [], f, 1000).whole  # all from rollups: whole
    assert charts([*views[:1], GatewayView("gone", error="unreachable")], [], f, 1000).notes == [
        "gone did not answer: not counted."]
    by_user = charts(views[:1], events, Filters(user="alice"), 1000)
    assert by_user.requests == 1 and "user filter is not kept in the per-minute rollups" in by_user.notes[0]


@pytest.mark.parametrize("odd", [
    [], "a summary", {"verdicts": ["allow"]}, {"requests": "many"}, {"requests": -5}, {"policies": [None]},
    {"policies": [{"policy": "p", "blocks": 1.5}]}, {"series": [{"slice": 0, "histogram": {"100000": 1}}]},
    {"series": [{"slice": 0, "histogram": {"4": "x"}}]},
])
def test_a_summary_not_in_its_shape_counts_as_none_and_the_page_still_renders(odd):
    """Another gateway's answer is read, never trusted: one odd fleet member must not break the console;
    its part is counted from its events, as for a gateway without summaries."""
    from gateway.control.console_charts import charts

    f = Filters()
    events = [{"gateway": "odd", "verdict": "block", "_ts": f.since + 5, "latency_ms": 3.0,
               "policies": [{"policy": "dlp-filter", "verdict": "block"}]}]
    views = [GatewayView("odd", status={}, summary=odd)]
    numbers = charts(views, events, f, 1000)
    assert numbers.requests == 1 and numbers.verdicts == {"block": 1} and not numbers.whole
    assert 'id="chart-scope"' in fragment(views, f)


def test_a_summary_counted_since_no_time_is_still_counted():
    from gateway.control.console_charts import charts

    summary = {"requests": 3, "verdicts": {"allow": 3}, "rollups_since": float("inf")}
    assert charts([GatewayView("new", status={}, summary=summary)], [], Filters(), 1000).requests == 3


def test_a_verdict_filter_is_asked_of_the_gateway_so_a_block_stays_in_view(tmp_path, gateway_process,
                                                                          monkeypatch):
    config = tmp_path / "policy-config.yaml"
    config.write_text(CONFIG)
    gw = gateway_process(config, state=tmp_path / "state", env={"KEEPTRUSTS_ADMIN_TOKEN": TOKEN})
    since = time.time() - 60
    blocked_request(gw)
    allowed = {"model": "demo-model", "messages": [{"role": "user", "content": "hello"}]}
    for _ in range(4):
        assert gw.request("POST", "/v1/chat/completions", allowed)[0] == 200
    wait_for(lambda: gw.get("/keeptrusts/events?limit=10")[1]["count"] == 5, timeout=10)
    monkeypatch.setattr(console_data, "EVENTS_PER_GATEWAY", 3)  # a busy gateway: more events than are asked for
    newest = asyncio.run(console_data.remote_view(gw.url, TOKEN, since))
    assert [e["verdict"] for e in newest.events] == ["allow"] * 3
    blocks = asyncio.run(console_data.remote_view(gw.url, TOKEN, since, verdict="block"))
    assert [(e["verdict"], e["policy"]) for e in blocks.events] == [("block", "dlp-filter")]


@pytest.fixture
def busy_gateway(tmp_path, gateway_process):
    """A gateway whose store already holds 1,500 decisions of the last 50 minutes (more than the 1,000 newest
    events the console asks for), written by the store as a gateway writes them, and a console over it."""
    from gateway.events.store import EventStore
    from tests.synthetic_events import expected, synthetic

    events = synthetic(1500, time.time() - 3000, 2900, seed=5)
    store = EventStore(tmp_path / "state" / "events.db")
    for i in range(0, len(events), 500):
        store.add(events[i:i + 500])
    store.close()
    config = tmp_path / "policy-config.yaml"
    config.write_text(CONFIG)
    gw = gateway_process(config, state=tmp_path / "state", env={"KEEPTRUSTS_ADMIN_TOKEN": TOKEN})
    console = Console(gw.url)
    yield gw, console, expected(events)
    console.stop()


def test_console_counts_every_event_of_the_window_not_the_newest_1000(busy_gateway):
    gw, console, want = busy_gateway
    page = console.get("?fragment=1")
    totals = page.split('id="chart-totals">')[1].split("</p>")[0]
    assert "<b>1500</b> requests" in totals and f"<b>{want['verdicts']['block']}</b> blocked" in totals
    counts = page.split('id="verdict-counts">')[1].split("</p>")[0]
    for verdict, n in want["verdicts"].items():
        assert f'data-verdict="{verdict}">{n}</b>' in counts
    assert "Counted over the whole 1h" in page.split('id="chart-scope">')[1].split("</p>")[0]
    assert f"dlp-filter: {want['policies']['dlp-filter'][1]} blocks" in page  # the bar's tooltip
    decisions = page.split('<table id="decisions">')[1].split("</table>")[0]
    assert decisions.count("<tr class=") == 200  # the table: still the newest events
    # a filter the rollups do not keep is said to cover the newest events only
    by_user = console.get("?fragment=1&user=u1")
    assert "cover only the newest 1,000 events" in by_user.split('id="chart-scope"')[1].split("</p>")[0]
    # the gateway's own page counts the same
    status, _, body = gw.request("GET", "/keeptrusts/ui?fragment=1")
    assert status == 200 and "<b>1500</b> requests" in body.decode()
    status, _, _ = gw.request("GET", "/keeptrusts/events/summary?since=1h", admin=False)
    assert status == 401


@needs_browser
def test_browser_shows_the_true_total_of_a_window_over_1000_events(busy_gateway, browser):
    _, console, _ = busy_gateway
    browser.goto(console.url)
    assert browser.text("#chart-totals").startswith("1500 requests")
