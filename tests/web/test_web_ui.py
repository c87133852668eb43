"""The web UI in a real browser (headless Debian Chromium) against a real `ragqa serve`:
key -> collection -> upload (two good files, one corrupt) -> streamed answer with citations ->
feedback -> delete a document; readable API errors; phone width, labels and keyboard."""

from __future__ import annotations

import httpx
import pytest

from api.answers import AnswerLog
from api.db import server_db_path
from tests.web.conftest import in_ci, missing_browser

pytestmark = pytest.mark.timeout(600)  # tier `web` comes from the folder (tests/conftest.py)

if missing_browser() and not in_ci():  # under CI the `browser` fixture fails instead
    pytest.skip(missing_browser(), allow_module_level=True)

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # CI without selenium: fail loudly, through the fixture
    By = Keys = EC = Select = WebDriverWait = None
    StaleElementReferenceException = Exception

WAIT_S = 30


def wait(driver, timeout: float = WAIT_S) -> WebDriverWait:
    """Waits that retry while the page re-renders the elements being looked at."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))


def css(driver, selector: str):
    return driver.find_element(By.CSS_SELECTOR, selector)


def connect(driver, key: str) -> None:
    field = css(driver, "#api-key")
    field.clear()
    field.send_keys(key)
    css(driver, "#key-save").click()


def error_text(driver) -> str:
    wait(driver).until(lambda d: css(d, "#error").is_displayed())
    return css(driver, "#error-text").text


def test_upload_ask_feedback_delete(page, web_server, tmp_path):
    d, api = page, web_server
    connect(d, api["key"])
    wait(d).until(lambda d: css(d, "#connection").text.startswith("Connected"))

    # a collection, created from the page
    css(d, "#new-collection").send_keys("webdocs")
    css(d, "#collection-create").click()
    wait(d).until(
        lambda d: Select(css(d, "#collection-select")).first_selected_option.get_attribute("value") == "webdocs"
    )

    # a file type the API refuses: its 415 is shown as a sentence, nothing is queued
    bad_type = tmp_path / "tool.exe"
    bad_type.write_bytes(b"MZ not a document")
    css(d, "#file-input").send_keys(str(bad_type))
    assert "File type not accepted (415)" in error_text(d)
    css(d, "#error-close").click()

    # two good files and a corrupt PDF in one upload; per-file status from the job
    (tmp_path / "paris.txt").write_text("Paris is the capital of France. The Seine flows through Paris.\n")
    (tmp_path / "rivers.md").write_text("# Rivers\n\nThe Danube flows through Vienna and Budapest.\n")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\nthis is not really a pdf\n")
    paths = [str(tmp_path / n) for n in ("paris.txt", "rivers.md", "broken.pdf")]
    css(d, "#file-input").send_keys("\n".join(paths))
    wait(d).until(lambda d: css(d, "#jobs .job").get_attribute("data-status") in ("done", "failed"))
    rows = {
        r.get_attribute("data-filename"): r
        for r in d.find_elements(By.CSS_SELECTOR, "#jobs .job:first-child .job-file")
    }
    assert set(rows) == {"paris.txt", "rivers.md", "broken.pdf"}
    assert rows["paris.txt"].get_attribute("data-status") == "done"
    assert rows["rivers.md"].get_attribute("data-status") == "done"
    assert rows["broken.pdf"].get_attribute("data-status") == "failed"
    assert rows["broken.pdf"].find_element(By.CSS_SELECTOR, ".file-detail").text.strip()  # the reason is shown

    # the document list shows the two good files
    wait(d).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#document-list .document")) == 2)
    names = {li.get_attribute("data-filename") for li in d.find_elements(By.CSS_SELECTOR, "#document-list .document")}
    assert names == {"paris.txt", "rivers.md"}

    # ask with settings; Enter submits; the answer streams in, then its citations appear
    Select(css(d, "#mode")).select_by_value("rag-token")
    css(d, "#k").send_keys("2")
    question = css(d, "#question")
    question.send_keys("What is the capital of France?")
    question.send_keys(Keys.ENTER)
    card = wait(d).until(lambda d: d.find_element(By.CSS_SELECTOR, "#answers .answer-card"))
    wait(d).until(lambda d: card.get_attribute("data-state") in ("done", "error"))
    assert card.get_attribute("data-state") == "done", error_text(d)
    assert int(card.get_attribute("data-tokens")) >= 1  # token events arrived before the answer event
    assert card.find_element(By.CSS_SELECTOR, ".answer-text").text.strip()
    assert "rag-token · k 2" in card.find_element(By.CSS_SELECTOR, ".answer-meta").text
    citations = card.find_elements(By.CSS_SELECTOR, ".citation")
    assert 1 <= len(citations) <= 2
    first = citations[0]
    assert first.find_element(By.CSS_SELECTOR, ".citation-source").text in {"paris.txt", "rivers.md"}
    assert "score" in first.find_element(By.CSS_SELECTOR, ".citation-scores").text
    assert first.find_element(By.CSS_SELECTOR, ".citation-text").text.strip()
    assert "k 2 · full" in card.find_element(By.CSS_SELECTOR, ".answer-meta").text  # the UI's default style
    # a full answer's markers are links: one shows its cited chunk, the supporting span marked
    markers = card.find_elements(By.CSS_SELECTOR, ".answer-text .marker")
    assert markers, card.find_element(By.CSS_SELECTOR, ".answer-text").text
    markers[0].click()
    active = wait(d).until(lambda d: card.find_element(By.CSS_SELECTOR, ".citation.active"))
    assert active.get_attribute("data-index") == markers[0].text.strip("[]")
    answer_id = card.get_attribute("data-answer-id")
    assert answer_id

    # feedback: thumbs down with a corrected answer, stored with the answer
    card.find_element(By.CSS_SELECTOR, ".thumb-down").click()
    card.find_element(By.CSS_SELECTOR, ".correction").send_keys("Paris")
    card.find_element(By.CSS_SELECTOR, ".feedback-send").click()
    wait(d).until(lambda d: "saved" in card.find_element(By.CSS_SELECTOR, ".feedback-status").text)
    log = AnswerLog(server_db_path(api["home"]))
    try:
        records = [r for r in log.feedback_records() if r["answer_id"] == answer_id]
    finally:
        log.close()
    assert [(r["rating"], r["correction"]) for r in records] == [("down", "Paris")]

    # delete a document (after the confirmation dialog)
    paris = css(d, '#document-list .document[data-filename="paris.txt"]')
    paris.find_element(By.CSS_SELECTOR, "button").click()
    wait(d, 5).until(EC.alert_is_present()).accept()
    wait(d).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#document-list .document")) == 1)
    docs = httpx.get(f"{api['base']}/v1/collections/webdocs/documents", headers=api["headers"]).json()
    assert [x["filename"] for x in docs["data"]] == ["rivers.md"]


def test_wrong_key_shows_401(page):
    connect(page, "rq_000000000000_not-a-real-secret")
    text = error_text(page)
    assert "(401)" in text and "API key" in text
    assert "Connected" not in css(page, "#connection").text


def test_deleted_collection_shows_404(page, web_server):
    api = web_server
    assert (
        httpx.post(f"{api['base']}/v1/collections", json={"name": "ghost"}, headers=api["headers"]).status_code == 201
    )
    connect(page, api["key"])
    wait(page).until(
        lambda d: "ghost" in [o.get_attribute("value") for o in Select(css(d, "#collection-select")).options]
    )
    Select(css(page, "#collection-select")).select_by_value("ghost")
    # someone else deletes it; the page's next call gets a 404 and says so
    assert httpx.delete(f"{api['base']}/v1/collections/ghost", headers=api["headers"]).status_code == 204
    css(page, "#question").send_keys("Is anybody there?", Keys.ENTER)
    text = error_text(page)
    assert "Not found (404)" in text and "ghost" in text


DROP_FILE_JS = """
const [name, text] = arguments;
const dt = new DataTransfer();
dt.items.add(new File([text], name, {type: "text/plain"}));
document.querySelector("#dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
"""


def test_drop_upload_adapters_and_422(page, web_server):
    d, api = page, web_server
    lora = api["home"] / "adapters" / "demo-lora"
    lora.mkdir(parents=True)
    (lora / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')
    (lora / "ragqa_adapter.json").write_text('{"kind": "sft"}')
    reward = api["home"] / "adapters" / "judge"  # a reward model cannot write answers: not offered
    reward.mkdir()
    (reward / "adapter_config.json").write_text("{}")
    (reward / "ragqa_adapter.json").write_text('{"kind": "reward"}')
    assert (
        httpx.post(f"{api['base']}/v1/collections", json={"name": "dropped"}, headers=api["headers"]).status_code == 201
    )
    connect(d, api["key"])
    # the adapter picker lists the workspace's adapters (GET /v1/adapters)
    wait(d).until(lambda d: "demo-lora" in [o.get_attribute("value") for o in Select(css(d, "#adapter")).options])
    assert [o.text for o in Select(css(d, "#adapter")).options] == ["default", "none (bare model)", "demo-lora (sft)"]
    Select(css(d, "#collection-select")).select_by_value("dropped")
    # a file dropped on the drop zone is uploaded and ingested
    d.execute_script(DROP_FILE_JS, "dropped.txt", "Dropped files are ingested like picked ones.")
    wait(d).until(lambda d: css(d, "#jobs .job").get_attribute("data-status") == "done")
    wait(d).until(
        lambda d: (
            [li.get_attribute("data-filename") for li in d.find_elements(By.CSS_SELECTOR, "#document-list .document")]
            == ["dropped.txt"]
        )
    )
    # k above the server's limit: the 422 is shown as a sentence
    css(d, "#k").send_keys("99")
    css(d, "#question").send_keys("How are dropped files handled?", Keys.ENTER)
    text = error_text(d)
    assert "Invalid request (422)" in text and "k=99" in text


def test_phone_width_labels_and_keyboard(page, web_server):
    d = page
    d.set_window_size(390, 844)
    d.get(web_server["base"] + "/")
    wait(d).until(lambda d: css(d, "#connection").get_attribute("data-state"))  # the page has started
    # nothing wider than the phone's screen
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    # every control has an accessible name: a <label>, or aria-label
    unlabelled = d.execute_script("""
        return [...document.querySelectorAll('input, select, textarea, button')]
          .filter(e => !e.closest('template'))
          .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
          .map(e => e.id || e.outerHTML);""")
    assert unlabelled == []
    # the key field has focus first (no key saved); Enter in it connects with the keyboard alone
    assert d.switch_to.active_element.get_attribute("id") == "api-key"
    d.switch_to.active_element.send_keys(web_server["key"], Keys.ENTER)
    wait(d).until(lambda d: css(d, "#connection").text.startswith("Connected"))
    # the answer highlighter marks the answer inside a chunk's text
    marks = d.execute_script(
        "return window.ragqa.highlight('Paris is the capital of France.', 'the capital.')"
        ".filter(n => n.nodeName === 'MARK').map(n => n.textContent)"
    )
    assert marks == ["the capital"]


def test_conversation_thread(page, web_server):
    d, api = page, web_server
    base, h = api["base"], api["headers"]
    assert httpx.post(f"{base}/v1/collections", json={"name": "thread"}, headers=h).status_code == 201
    files = {"files": ("tower.txt", b"The Eiffel Tower was designed by Gustave Eiffel. It was built in 1889.")}
    job = httpx.post(f"{base}/v1/collections/thread/documents", files=files, headers=h).json()["job_id"]
    wait(d).until(lambda _: httpx.get(f"{base}/v1/jobs/{job}", headers=h).json()["status"] == "done")
    connect(d, api["key"])
    wait(d).until(
        lambda d: "thread" in [o.get_attribute("value") for o in Select(css(d, "#collection-select")).options]
    )
    Select(css(d, "#collection-select")).select_by_value("thread")
    for i, q in enumerate(["Who designed the Eiffel Tower?", "When was it built?"]):
        css(d, "#question").send_keys(q, Keys.ENTER)
        wait(d).until(
            lambda d, i=i: len(d.find_elements(By.CSS_SELECTOR, "#answers .answer-card[data-state=done]")) == i + 1
        )
    cards = d.find_elements(By.CSS_SELECTOR, "#answers .answer-card")
    assert [c.find_element(By.CSS_SELECTOR, ".question-text").text for c in cards] == [
        "Who designed the Eiffel Tower?",
        "When was it built?",
    ]  # a thread: oldest first
    assert not cards[0].find_element(By.CSS_SELECTOR, ".standalone-text").is_displayed()
    assert (
        "Who designed the Eiffel Tower? When was it built?"
        in cards[1].find_element(By.CSS_SELECTOR, ".standalone").text
    )
    convs = httpx.get(f"{base}/v1/conversations", headers=h).json()["data"]
    assert any(c["turns"] == 2 and c["title"] == "Who designed the Eiffel Tower?" for c in convs)
    css(d, "#new-conversation").click()
    assert d.find_elements(By.CSS_SELECTOR, "#answers .answer-card") == []
    css(d, "#question").send_keys("Who designed it?", Keys.ENTER)
    wait(d).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#answers .answer-card[data-state=done]")) == 1)
    assert not css(d, "#answers .standalone-text").is_displayed()  # a new conversation: no history
