"""OCR of scanned PDFs and images (rapidocr-onnxruntime, offline): pages rendered here from known text."""

from __future__ import annotations

import socket
import unicodedata
from pathlib import Path

import pytest

from ingest.chunker import Chunker
from ingest.config import ChunkingConfig, LoaderConfig
from ingest.errors import EmptyDocumentError, LoaderError
from ingest.loaders import load_file
from ingest.loaders.isolation import LoaderPool
from ingest.loaders.ocr import OcrEngine, OcrTimeoutError

CFG = LoaderConfig()

PAGE_1 = [
    "Retrieval augmented generation grounds answers",
    "in documents found by a vector index.",
    "Each chunk keeps its page number and source file.",
]
PAGE_2 = [
    "Scanned pages are rendered and recognised offline.",
    "The time budget for one page is thirty seconds.",
]
TEXT_LAYER = "This page has a real text layer, written by fpdf2 with Helvetica, and needs no OCR at all."


def render(lines: list[str], size: tuple[int, int] = (1654, 1100), font_px: int = 40):
    """A clean scan: black text on white, like a 200 dpi page."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_px)
    for i, line in enumerate(lines):
        draw.text((120, 120 + i * int(font_px * 1.8)), line, fill="black", font=font)
    return image


def image_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A PDF whose pages are images only (no text layer), as a scanner writes them."""
    images = [render(lines) for lines in pages]
    images[0].save(path, "PDF", resolution=200.0, save_all=True, append_images=images[1:])
    return path


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(expected: str, got: str) -> float:
    """1 - normalised edit distance, after NFKC and collapsing white space."""

    def norm(s: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", s).split())

    e, g = norm(expected), norm(got)
    return 1.0 - edit_distance(e, g) / max(len(e), len(g), 1)


class TestScannedPdf:
    def test_pages_recognised_with_high_accuracy(self, tmp_path):
        docs = load_file(image_pdf(tmp_path / "scan.pdf", [PAGE_1, PAGE_2]), CFG)
        assert [d.key for d in docs] == ["page-1", "page-2"]
        for doc, lines in zip(docs, [PAGE_1, PAGE_2]):
            accuracy = char_accuracy(" ".join(lines), doc.text)
            assert accuracy >= 0.95, (accuracy, doc.text)
            assert doc.metadata["ocr"] is True
            assert 0.8 <= doc.metadata["ocr_confidence"] <= 1.0
            assert doc.text.count("\n") == len(lines) - 1  # one recognised line per printed line

    def test_text_layer_pdf_does_not_go_through_ocr(self, tmp_path, monkeypatch):
        from fpdf import FPDF

        def no_ocr():
            raise AssertionError("OCR engine requested for a PDF with a text layer")

        monkeypatch.setattr("ingest.loaders.ocr.get_engine", no_ocr)
        pdf = FPDF()
        pdf.set_font("Helvetica", size=12)
        pdf.add_page()
        pdf.multi_cell(0, 8, TEXT_LAYER)
        pdf.image(render(["A figure caption inside an image"], size=(800, 200)), w=80)
        pdf.output(str(tmp_path / "text.pdf"))
        doc = load_file(tmp_path / "text.pdf", CFG)[0]
        assert doc.text == TEXT_LAYER and doc.metadata["ocr"] is False and "ocr_confidence" not in doc.metadata

    def test_mixed_pdf_ocr_only_where_text_is_missing_and_flags_reach_chunks(self, tmp_path):
        from fpdf import FPDF

        pdf = FPDF()
        pdf.set_font("Helvetica", size=12)
        pdf.add_page()
        pdf.multi_cell(0, 8, TEXT_LAYER)
        pdf.add_page()
        pdf.image(render(PAGE_2), x=0, y=0, w=210)
        pdf.output(str(tmp_path / "mixed.pdf"))
        docs = load_file(tmp_path / "mixed.pdf", CFG)
        first, second = docs
        assert first.metadata["ocr"] is False and first.text == TEXT_LAYER
        assert second.metadata["ocr"] is True and char_accuracy(" ".join(PAGE_2), second.text) >= 0.95
        chunker = Chunker(ChunkingConfig(chunk_tokens=64, overlap_tokens=8), lambda s: len(s.split()))
        chunks = chunker.chunk_all(docs)
        assert [(c.metadata["page"], c.metadata["ocr"]) for c in chunks] == [(1, False), (2, True)]
        assert isinstance(chunks[1].metadata["ocr_confidence"], float) and "ocr_confidence" not in chunks[0].metadata

    def test_ocr_off_leaves_a_scan_empty(self, tmp_path):
        with pytest.raises(EmptyDocumentError, match="ingest.loader.ocr = true"):
            load_file(image_pdf(tmp_path / "scan.pdf", [PAGE_1]), LoaderConfig(ocr=False))


class TestImageFiles:
    def test_jpeg_becomes_a_document(self, tmp_path):
        render(PAGE_1).save(tmp_path / "note.jpg", quality=90)
        (doc,) = load_file(tmp_path / "note.jpg", CFG)
        assert char_accuracy(" ".join(PAGE_1), doc.text) >= 0.95, doc.text
        assert doc.title == "note" and doc.metadata["ocr"] is True and doc.metadata["ocr_confidence"] >= 0.8
        assert doc.metadata["format"] == "jpeg" and doc.key == ""

    def test_png_and_multi_page_tiff(self, tmp_path):
        render(["Fax cover sheet"], size=(900, 300)).save(tmp_path / "cover.png")
        (cover,) = load_file(tmp_path / "cover.png", CFG)
        assert cover.text == "Fax cover sheet" and cover.metadata["format"] == "png"
        path = tmp_path / "fax.tiff"
        render(["Fax cover sheet"], size=(900, 300)).save(path, save_all=True, append_images=[render(PAGE_2)])
        docs = load_file(path, CFG)
        assert [d.key for d in docs] == ["page-1", "page-2"]
        assert [d.metadata["page"] for d in docs] == [1, 2] and docs[0].metadata["format"] == "tiff"
        assert char_accuracy(" ".join(PAGE_2), docs[1].text) >= 0.95

    def test_blank_image_is_empty(self, tmp_path):
        from PIL import Image

        Image.new("RGB", (400, 300), "white").save(tmp_path / "blank.png")
        with pytest.raises(EmptyDocumentError, match="no text"):
            load_file(tmp_path / "blank.png", CFG)

    def test_not_an_image(self, tmp_path):
        (tmp_path / "fake.png").write_text("not an image at all")
        with pytest.raises(LoaderError, match="not a readable image"):
            load_file(tmp_path / "fake.png", CFG)

    def test_ocr_off_refuses_images(self, tmp_path):
        render(PAGE_1).save(tmp_path / "note.png")
        with pytest.raises(LoaderError, match="OCR is off"):
            load_file(tmp_path / "note.png", LoaderConfig(ocr=False))


class TestBudgetAndIsolation:
    def test_page_time_budget_gives_a_clear_error_and_the_engine_recovers(self, tmp_path):
        config = LoaderConfig(ocr_page_timeout_s=0.001)
        scan = image_pdf(tmp_path / "scan.pdf", [PAGE_2])
        with pytest.raises(
            OcrTimeoutError, match=r"page 1: OCR took longer than 0.001 s; raise ingest.loader.ocr_page_timeout_s"
        ):
            load_file(scan, config)
        render(PAGE_1).save(tmp_path / "note.png")
        with pytest.raises(LoaderError, match="ocr_page_timeout_s"):
            load_file(tmp_path / "note.png", config)
        (doc,) = load_file(scan, CFG)  # the terminate flag of a timed-out page must not leak into the next
        assert char_accuracy(" ".join(PAGE_2), doc.text) >= 0.95

    @pytest.mark.integration
    def test_ocr_fits_the_loader_process_memory_limit(self, tmp_path):
        """The isolated loader (RLIMIT_AS = memory_mb, default) builds the engine and reads a scan."""
        path = image_pdf(tmp_path / "scan.pdf", [PAGE_1])
        with LoaderPool(LoaderConfig()) as pool:
            (doc,) = pool.load(path)
        assert doc.metadata["ocr"] is True and char_accuracy(" ".join(PAGE_1), doc.text) >= 0.95

    @pytest.mark.integration
    def test_each_ocr_page_restarts_the_file_clock(self, tmp_path):
        """A file of many pages may take longer than timeout_s in all; a page that stalls is still stopped."""
        (tmp_path / "pages.txt").write_text("six pages of 0.4 s")
        (tmp_path / "evil.txt").write_text("one page, then a stall")
        target = "tests.ingest.isolation_targets:paged_load"
        with LoaderPool(LoaderConfig(timeout_s=1.0, ocr_page_timeout_s=0.5), target=target) as pool:
            assert pool.load(tmp_path / "pages.txt")[0].text == "six pages of 0.4 s"
            with pytest.raises(LoaderError, match="took longer than 1 s"):
                pool.load(tmp_path / "evil.txt")

    def test_models_ship_in_the_wheel_no_network(self, monkeypatch):
        """Building the engine and recognising a page opens no network connection."""

        def refuse(*args, **kwargs):
            raise AssertionError("OCR tried to open a network connection")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        engine = OcrEngine()
        result = engine.recognise(render(PAGE_2), "page", budget_s=60.0)
        assert char_accuracy(" ".join(PAGE_2), result.text) >= 0.95
