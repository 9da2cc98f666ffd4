#!/usr/bin/python3
"""Drives the otter console in headless Chromium (Debian's chromium + chromium-driver + python3-selenium).

Started by server/tests/console.rs against a real otter-server with simulated devices; the environment says where:
OTTER_URL, OTTER_ADMIN_TOKEN, OTTER_OPERATOR_TOKEN, OTTER_APPROVER_TOKEN, OTTER_VIEWER_TOKEN, OTTER_ARTIFACT (a signed 2.1 .otter),
OTTER_LAB_ROLLOUT (a 2.0 rollout whose second group needs an approver), OTTER_SPARE_ROLLOUT (a rollout to a
device that never polls), OTTER_SCREENSHOTS, OTTER_DOWNLOADS, and
optionally OTTER_CONSOLE_SCREENSHOT (where to save the overview for the docs).

Every check waits for a condition on the page (never a fixed sleep); a failure saves a screenshot and exits 1.
"""

import csv
import io
import json
import os
import sys
import time
import traceback
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["OTTER_URL"]
OPERATOR = os.environ["OTTER_OPERATOR_TOKEN"]
APPROVER = os.environ["OTTER_APPROVER_TOKEN"]
VIEWER = os.environ["OTTER_VIEWER_TOKEN"]
ADMIN = os.environ["OTTER_ADMIN_TOKEN"]
ARTIFACT = os.environ["OTTER_ARTIFACT"]
LAB = os.environ["OTTER_LAB_ROLLOUT"]
SPARE = os.environ["OTTER_SPARE_ROLLOUT"]
SHOTS = os.environ["OTTER_SCREENSHOTS"]
DOWNLOADS = os.environ["OTTER_DOWNLOADS"]
DOC_SHOT = os.environ.get("OTTER_CONSOLE_SCREENSHOT")
XSS = '<img src=x onerror="window.__xss=1">'
TIMEOUT = 30

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:5.1f} s] {msg}", flush=True)


def api(method, path):
    """A call to the REST API as the admin (test set-up beside the browser)."""
    req = urllib.request.Request(f"{URL}{path}", method=method, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def browser():
    o = Options()
    o.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1050"]:
        o.add_argument(a)
    o.add_experimental_option(
        "prefs", {"download.default_directory": DOWNLOADS, "download.prompt_for_download": False}
    )
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": DOWNLOADS})
    return d


class Console:
    def __init__(self, driver):
        self.d = driver
        self.shot_no = 0

    def wait(self, cond, what, timeout=TIMEOUT):
        """Waits until cond(driver) is truthy (stale elements count as not yet)."""

        def check(d):
            try:
                return cond(d)
            except StaleElementReferenceException:
                return False

        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(check)
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}") from None

    def el(self, css):
        return self.wait(lambda d: d.find_element(By.CSS_SELECTOR, css), f"element {css}")

    def text_of(self, css):
        found = self.d.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def wait_text(self, css, *parts, timeout=TIMEOUT):
        """Waits until the element's visible text contains every part."""
        self.wait(lambda d: all(p in self.text_of(css) for p in parts), f"{css} to show {parts!r}", timeout)
        return self.text_of(css)

    def wait_text_reloading(self, css, *parts, timeout=TIMEOUT):
        """As wait_text, reloading the page now and then (for pages without polling)."""
        end = time.monotonic() + timeout
        while True:
            try:
                return self.wait_text(css, *parts, timeout=2)
            except AssertionError:
                if time.monotonic() > end:
                    raise AssertionError(f"{css} never showed {parts!r}; it shows {self.text_of(css)!r}") from None
                self.d.refresh()

    def go(self, hash_):
        self.d.get(f"{URL}/console/{hash_}")

    def shot(self, name):
        self.shot_no += 1
        path = os.path.join(SHOTS, f"{self.shot_no:02d}-{name}.png")
        self.d.save_screenshot(path)
        log(f"screenshot {path}")

    def sign_in(self, token, role):
        self.go("#/")
        field = self.el("#token")
        field.clear()
        field.send_keys(token)
        self.el("#sign-in button[type=submit]").click()
        # The role badge is upper-cased by CSS; Selenium reads the rendered text.
        self.wait(lambda d: self.text_of("#who-role").lower() == role, f"signed in as {role}")
        log(f"signed in as {self.text_of('#who-name')} ({role})")

    def sign_out(self):
        self.el("#sign-out").click()
        self.el("#sign-in")

    def buttons_for_changes(self):
        return [e.text for e in self.d.find_elements(By.CSS_SELECTOR, ".act, #upload-file, button.approve, #new-rollout")]


def scenario(c):
    d = c.d
    # Sign-in: a wrong token is refused on the page, then the operator signs in.
    d.get(f"{URL}/")
    c.el("#sign-in")
    assert d.current_url.endswith("/console/"), d.current_url
    c.el("#token").send_keys("otk_wrong")
    c.el("#sign-in button[type=submit]").click()
    c.wait_text("#sign-in-error", "unknown or revoked")
    cookies = d.get_cookies()
    assert not cookies, f"no cookie after a refused sign-in: {cookies}"
    c.sign_in(OPERATOR, "operator")
    session = [k for k in d.get_cookies() if k["name"] == "otter_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict", session
    assert d.execute_script("return document.cookie") == "", "page JavaScript cannot read the session cookie"

    # Overview: 22 devices, the chart has the factory version.
    c.wait_text("main h1", "Fleet overview")
    stat = c.wait_text(".stats", "devices")
    assert stat.split()[0] == "22", stat
    c.wait(lambda d: d.find_elements(By.CSS_SELECTOR, 'svg.chart g.bar[data-label="1.9"]'), "a 1.9 bar in the chart")
    c.shot("overview")

    # Devices: search, filter by attribute, open one.
    d.find_element(By.LINK_TEXT, "Devices").click()
    c.wait_text("#device-count", "1–22 of 22 devices")
    c.el("#search").send_keys("prod-07")
    c.el("#device-filters button[type=submit]").click()
    c.wait_text("#device-count", "1–1 of 1 devices")
    assert c.text_of("#devices tbody").startswith("gw-prod-07"), c.text_of("#devices tbody")
    c.go("#/devices?attr_key=site&attr_value=berlin")
    c.wait_text_reloading("#device-count", "of 6 devices")
    rows = [r.text.split()[0] for r in d.find_elements(By.CSS_SELECTOR, "#devices tbody tr")]
    assert rows == ["gw-evil", "gw-prod-00", "gw-prod-02", "gw-prod-04", "gw-prod-06", "gw-prod-08"], rows
    c.go("#/devices?q=prod-07")
    c.el("#devices tbody a").click()
    c.wait_text("#device-id", "gw-prod-07")
    c.wait_text_reloading("#attributes", "site", "hw_revision", "kernel", "6.1.0-otter")
    c.wait_text("#desired-reported", "Reported", "1.9")
    c.wait_text("#device-audit", "device.registered", "operator:olivia")
    log("found gw-prod-07 with its attributes")
    c.shot("device")

    # Rotate a device token: shown once.
    c.go("#/devices/spare-01")
    c.wait_text("#device-id", "spare-01")
    c.el("#rotate").click()
    WebDriverWait(d, 5).until(EC.alert_is_present())
    d.switch_to.alert.accept()
    token = c.wait_text("#new-token", "ott_")
    assert len(token.strip()) == 68, token

    # A hostile device's attribute and feedback message are shown as text and run nothing.
    c.go("#/devices/gw-evil")
    c.wait_text_reloading("#attributes", XSS)
    c.wait_text_reloading("#actions", f"{XSS} failed")
    assert d.execute_script("return window.__xss") is None, "the device's text ran as code"
    assert not d.find_elements(By.CSS_SELECTOR, "main img"), "the device's text became an element"
    log("hostile attribute and message shown as text")
    c.shot("device-hostile")

    # Upload 2.1 through the file input.
    d.find_element(By.LINK_TEXT, "Artifacts").click()
    c.el("#upload-file").send_keys(ARTIFACT)
    c.el("#upload").click()
    shown = c.wait_text("#uploaded", "version 2.1", "test-gw", "security version 4", "signed by")
    signer = shown.rsplit("signed by ", 1)[1].rstrip(".")
    c.wait_text("#artifacts", "2.1", signer)
    log(f"uploaded 2.1, signed by {signer}")
    c.shot("artifacts")
    # A file that is not a signed artifact is refused with the reader's reason, and not listed.
    junk = os.path.join(DOWNLOADS, "junk.otter")
    with open(junk, "wb") as f:
        f.write(b"not an artifact" * 100)
    c.el("#upload-file").send_keys(junk)
    c.el("#upload").click()
    c.wait(lambda d: c.text_of("#upload-result .error"), "the refusal of junk.otter")
    assert "junk.otter" not in c.text_of("#artifacts"), c.text_of("#artifacts")
    log(f"junk refused: {c.text_of('#upload-result .error')}")

    # Pause, resume and cancel a rollout (its one device never polls, so it stays running until cancelled).
    c.go(f"#/rollouts/{SPARE}")
    c.wait_text("#rollout-state", "running")
    c.el("#pause").click()
    c.wait_text("#rollout-state", "paused")
    c.wait_text("#reason", "operator:olivia")
    c.el("#resume").click()
    c.wait_text("#rollout-state", "running")
    c.el("#cancel").click()
    WebDriverWait(d, 5).until(EC.alert_is_present())
    d.switch_to.alert.accept()
    c.wait_text("#rollout-state", "cancelled")
    assert not d.find_elements(By.CSS_SELECTOR, "#pause, #resume, #cancel"), "no buttons on a cancelled rollout"
    log("paused, resumed and cancelled a rollout")

    # A canary rollout of 2.1 to production: the live count, then it halts on its failing canary by itself.
    d.find_element(By.LINK_TEXT, "Rollouts").click()
    c.el("#new-rollout").click()
    c.el("#r-name").send_keys("2.1 canary")
    Select(c.el("#r-artifact")).select_by_visible_text(next(
        o.text for o in Select(c.el("#r-artifact")).options if o.text.startswith("2.1 ")))
    c.wait_text("#match-count", "22 matching devices")
    c.el("#r-tags").send_keys("production")
    c.wait_text("#match-count", "10 matching devices")
    c.shot("rollout-form")
    c.el("#create-rollout").click()
    c.wait(lambda d: "#/rollouts/" in d.current_url and "new" not in d.current_url, "the new rollout's page")
    c.wait_text("#rollout-name", "2.1 canary")
    c.wait_text("#rollout-state", "paused")
    reason = c.wait_text("#reason", "canary", "failed", "error threshold")
    log(f"the canary halted the rollout: {reason}")
    groups = c.text_of("#groups")
    assert "1 failed" in groups, groups
    assert c.el("#resume") and c.el("#cancel")
    canary_url = d.current_url
    c.shot("rollout-paused")

    # The approver (another user) approves the lab wave; the rollout finishes.
    c.sign_out()
    c.sign_in(APPROVER, "approver")
    c.go(f"#/rollouts/{LAB}")
    c.wait_text("#rollout-name", "2.0 to the lab")
    # The Approve button appears once the wave waits for an approver (the page polls every 2 s).
    c.el("button.approve").click()
    c.wait_text("#groups", "approved by operator:alice")
    c.wait_text("#rollout-state", "finished", timeout=40)
    assert not d.find_elements(By.CSS_SELECTOR, "#pause, #cancel, #resume"), "an approver gets no operator buttons"
    log("alice approved the lab wave; the rollout finished")
    c.shot("rollout-approved")

    # Compliance report: CSV and JSON downloads.
    d.find_element(By.LINK_TEXT, "Compliance").click()
    c.el("#min-sv").send_keys("3")
    c.el("#compliance-form button[type=submit]").click()
    c.wait_text("#versions", "2.0", "1.9")
    c.el("#download-csv").click()
    csv_path = os.path.join(DOWNLOADS, "compliance.csv")
    c.wait(lambda d: os.path.exists(csv_path) and not os.path.exists(csv_path + ".crdownload"), "compliance.csv")
    rows = list(csv.DictReader(io.open(csv_path, encoding="utf-8")))
    by_id = {r["controller_id"]: r for r in rows}
    assert len(rows) == 22, len(rows)
    lab = [r for r in rows if r["controller_id"].startswith("gw-lab-")]
    assert all(r["version"] == "2.0" and r["security_version"] == "3" and r["below_minimum"] == "false" for r in lab), lab
    failed = [r for r in rows if "2.1 did not boot" in r["last_failure"]]
    assert len(failed) == 1 and failed[0]["controller_id"].startswith("gw-prod-"), failed
    assert by_id["spare-01"]["below_minimum"] == "true", by_id["spare-01"]
    assert by_id["gw-evil"]["last_failure"] == f"{XSS} failed", by_id["gw-evil"]
    c.el("#download-json").click()
    json_path = os.path.join(DOWNLOADS, "compliance.json")
    c.wait(lambda d: os.path.exists(json_path) and not os.path.exists(json_path + ".crdownload"), "compliance.json")
    report = json.load(open(json_path, encoding="utf-8"))
    assert report["min_security_version"] == 3 and len(report["devices"]) == 22, report["min_security_version"]
    log(f"compliance report: {len(rows)} devices, {len(report['below_minimum'])} below 3")
    c.shot("compliance")

    # Audit log: the chain check and a filter.
    d.find_element(By.LINK_TEXT, "Audit log").click()
    c.wait_text("#chain", "Chain intact")
    c.el("#audit-event").send_keys("rollout.paused")
    c.el("#audit-filters button[type=submit]").click()
    c.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#audit tbody tr"), "a rollout.paused entry")
    events = {r.find_elements(By.TAG_NAME, "td")[3].text for r in d.find_elements(By.CSS_SELECTOR, "#audit tbody tr")}
    assert events == {"rollout.paused"}, events
    c.shot("audit")

    # A viewer sees everything and no button that would be refused.
    c.sign_out()
    c.sign_in(VIEWER, "viewer")
    for page, ready in [
        ("#/devices/gw-prod-07", "#device-audit"),
        ("#/devices/spare-01", "#device-audit"),
        ("#/artifacts", "#artifacts"),
        ("#/rollouts", "#rollouts"),
        ("#/rollouts/new", "#not-allowed"),
        (canary_url.split("/console/", 1)[1], "#groups"),
        (f"#/rollouts/{LAB}", "#groups"),
        ("#/", "#by-state"),
    ]:
        c.go(page)
        c.el(ready)
        assert not c.buttons_for_changes(), f"a viewer sees {c.buttons_for_changes()} on {page}"
    log("a viewer sees no action buttons")

    # The overview now: the halted rollout with its reason, the failures with the devices' own messages (as text).
    c.wait_text("#rollouts-in-progress", "2.1 canary", "paused", "error threshold")
    c.wait_text("#failures", "gw-evil", f"{XSS} failed", "2.1 did not boot")
    assert d.execute_script("return window.__xss") is None
    assert not d.find_elements(By.CSS_SELECTOR, "main img")
    c.shot("overview-after")
    if DOC_SHOT:
        d.save_screenshot(DOC_SHOT)
        log(f"saved {DOC_SHOT}")

    # Revoking the viewer's token (through the API, as an admin) ends the console session at the next request.
    tokens = api("GET", "/api/v1/tokens")
    victor = next(t["id"] for t in tokens if t["name"] == "victor")
    api("DELETE", f"/api/v1/tokens/{victor}")
    c.go("#/devices")
    c.wait_text("#sign-in-error", "session ended")
    log("the revoked viewer's session ended")

    # Nothing the page did was blocked by the Content-Security-Policy, and no script error.
    problems = [
        e["message"]
        for e in d.get_log("browser")
        if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]
    ]
    assert not problems, problems


def main():
    os.makedirs(SHOTS, exist_ok=True)
    os.makedirs(DOWNLOADS, exist_ok=True)
    d = browser()
    c = Console(d)
    try:
        scenario(c)
        log("all console checks passed")
        return 0
    except Exception:
        traceback.print_exc()
        try:
            c.shot("FAILED")
            print("page text at failure:\n" + d.find_element(By.TAG_NAME, "body").text[:3000])
            for e in d.get_log("browser"):
                print("browser:", e["level"], e["message"])
        except Exception:
            pass
        return 1
    finally:
        d.quit()


if __name__ == "__main__":
    sys.exit(main())
