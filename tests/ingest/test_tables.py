"""Tables as Markdown from PDF (pdfplumber), DOCX and HTML, and the chunker's rule: never split a row, repeat the
header in every piece of a table larger than a chunk. Files are built in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.chunker import Chunker
from ingest.config import ChunkingConfig, LoaderConfig
from ingest.documents import Document
from ingest.loaders import load_file
from ingest.markdown_tables import find_tables, markdown_table

CFG = LoaderConfig()
ROWS = [
    ("Setting", "Default", "Meaning"),
    ("chunk_tokens", "200", "chunk size"),
    ("nprobe", "16", "IVF lists searched"),
]
MARKDOWN = (
    "| Setting | Default | Meaning |\n"
    "| --- | --- | --- |\n"
    "| chunk_tokens | 200 | chunk size |\n"
    "| nprobe | 16 | IVF lists searched |"
)


def words(text: str) -> int:
    """A whitespace tokenizer: the chunker's limits are then easy to check by hand."""
    return len(text.split())


class TestMarkdownTable:
    def test_header_separator_rows(self):
        assert markdown_table(ROWS) == MARKDOWN

    def test_cells_are_one_line_and_pipes_escaped(self):
        table = markdown_table([["a", "b"], ["x | y", "two\nlines"], [None, "z"]])
        assert table.splitlines() == ["| a | b |", "| --- | --- |", "| x \\| y | two lines |", "|  | z |"]

    def test_ragged_rows_padded_and_empty_columns_dropped(self):
        assert markdown_table([["a", "", "c"], ["1", "", "3", ""], ["", ""]]) == "| a | c |\n| --- | --- |\n| 1 | 3 |"
        assert markdown_table([["", None]]) == ""

    def test_find_tables_round_trip(self):
        text = f"Intro line.\n\n{MARKDOWN}\n\nAfter | not a table\nplain."
        (span,) = find_tables(text)
        assert text[span.start : span.end] == MARKDOWN
        assert span.header(text) == MARKDOWN.split("\n", 2)[0] + "\n" + MARKDOWN.split("\n", 2)[1]
        assert [line for _, line in span.rows] == MARKDOWN.splitlines()[2:]
        assert all(text[o : o + len(line)] == line for o, line in span.rows)

    def test_find_tables_needs_a_separator(self):
        assert find_tables("a | b\nc | d\n") == []
        assert find_tables("no pipes here\n---\n") == []
        assert len(find_tables("a | b\n---|:---:\n1 | 2\n")) == 1  # GFM without outer pipes


class TestDocxTables:
    def test_table_as_markdown_in_place(self, tmp_path):
        import docx

        document = docx.Document()
        document.add_paragraph("Before the table.")
        table = document.add_table(rows=3, cols=3)
        for r, row in enumerate(ROWS):
            for c, text in enumerate(row):
                table.cell(r, c).text = text
        document.add_paragraph("After the table.")
        document.save(str(tmp_path / "t.docx"))
        (doc,) = load_file(tmp_path / "t.docx", CFG)
        assert doc.text == f"Before the table.\n\n{MARKDOWN}\n\nAfter the table."

    def test_merged_cells_keep_columns_aligned(self, tmp_path):
        import docx

        document = docx.Document()
        table = document.add_table(rows=2, cols=3)
        for c, text in enumerate(["Name", "Low", "High"]):
            table.cell(0, c).text = text
        table.cell(1, 0).text = "range"
        merged = table.cell(1, 1).merge(table.cell(1, 2))
        merged.text = "any"
        document.save(str(tmp_path / "m.docx"))
        (doc,) = load_file(tmp_path / "m.docx", CFG)
        assert doc.text == "| Name | Low | High |\n| --- | --- | --- |\n| range | any |  |"


class TestHtmlTables:
    def test_thead_colspan_rowspan_and_caption(self, tmp_path):
        page = (
            "<html><body><h1>Limits</h1><p>Intro.</p><table><caption>Table 1: limits</caption>"
            "<thead><tr><th>Setting</th><th>Default</th><th>Meaning</th></tr></thead><tbody>"
            "<tr><td rowspan='2'>index</td><td>flat</td><td>exact</td></tr>"
            "<tr><td colspan='2'>ivf (approximate, <b>faster</b>)</td></tr>"
            "<tr><td>a|b</td><td>1</td><td>x</td></tr></tbody></table><p>After.</p></body></html>"
        )
        (tmp_path / "t.html").write_text(page)
        (doc,) = load_file(tmp_path / "t.html", CFG)
        assert doc.text == (
            "Limits\n\nIntro.\n\nTable 1: limits\n\n"
            "| Setting | Default | Meaning |\n| --- | --- | --- |\n"
            "| index | flat | exact |\n|  | ivf (approximate, faster) |  |\n| a\\|b | 1 | x |\n\nAfter."
        )

    def test_header_from_first_row_without_thead(self, tmp_path):
        rows = "".join(f"<tr>{''.join(f'<td>{c}</td>' for c in row)}</tr>" for row in ROWS)
        (tmp_path / "t.html").write_text(f"<html><body><table>{rows}</table></body></html>")
        assert load_file(tmp_path / "t.html", CFG)[0].text == MARKDOWN

    def test_one_column_table_stays_lines(self, tmp_path):
        (tmp_path / "t.html").write_text("<html><body><table><tr><td>alpha</td></tr><tr><td>beta</td></tr></table>")
        assert load_file(tmp_path / "t.html", CFG)[0].text == "alpha\nbeta"


class TestPdfTables:
    def make(self, path: Path, rows: list[tuple[str, ...]]) -> Path:
        from fpdf import FPDF

        pdf = FPDF()
        pdf.set_font("Helvetica", size=11)
        pdf.add_page()
        pdf.multi_cell(0, 7, "Quarterly figures of the ingestion service, measured on the test machine.")
        pdf.ln(4)
        with pdf.table() as table:
            for row in rows:
                table.row(row)
        pdf.ln(4)
        pdf.multi_cell(0, 7, "The figures above are medians of five runs.")
        pdf.output(str(path))
        return path

    def test_table_as_markdown_between_its_text(self, tmp_path):
        (doc,) = load_file(self.make(tmp_path / "t.pdf", ROWS), CFG)
        assert doc.text == (
            "Quarterly figures of the ingestion service, measured on the test machine.\n\n"
            f"{MARKDOWN}\n\nThe figures above are medians of five runs."
        )
        assert doc.metadata["ocr"] is False

    def test_tables_off_keeps_plain_text(self, tmp_path):
        (doc,) = load_file(self.make(tmp_path / "t.pdf", ROWS), LoaderConfig(pdf_tables=False))
        assert "| --- |" not in doc.text and "chunk_tokens" in doc.text

    def test_plain_pdf_unchanged(self, tmp_path):
        from fpdf import FPDF

        pdf = FPDF()
        pdf.set_font("Helvetica", size=11)
        pdf.add_page()
        pdf.multi_cell(0, 7, "No table | on this page, only a rule below.")
        pdf.line(10, 40, 200, 40)
        pdf.output(str(tmp_path / "p.pdf"))
        (doc,) = load_file(tmp_path / "p.pdf", CFG)
        assert doc.text == "No table | on this page, only a rule below."


def big_table(n_rows: int) -> str:
    rows = [f"| item {i} | value {i} | note number {i} |" for i in range(n_rows)]
    return "| Name | Value | Note |\n| --- | --- | --- |\n" + "\n".join(rows)


class TestChunkerTableRule:
    HEADER = "| Name | Value | Note |\n| --- | --- | --- |"

    @pytest.fixture
    def chunker(self) -> Chunker:
        return Chunker(ChunkingConfig(chunk_tokens=60, overlap_tokens=8), words)

    def test_small_table_stays_whole(self, chunker):
        text = "Intro paragraph with a few words.\n\n" + big_table(3) + "\n\nClosing words."
        pieces = [p for _, p in chunker.split_text(text)]
        assert any(big_table(3) in p for p in pieces)

    def test_big_table_repeats_header_and_keeps_rows(self, chunker):
        table = big_table(40)
        intro = " ".join(f"intro{i}" for i in range(80))
        text = f"{intro}\n\n{table}\n\nThe end of the document."
        pieces = chunker.split_text(text)
        table_pieces = [(s, p) for s, p in pieces if p.startswith("| Name")]
        assert len(table_pieces) >= 5
        all_rows = table.splitlines()[2:]
        seen: list[str] = []
        for start, piece in table_pieces:
            assert piece.startswith(self.HEADER + "\n"), piece
            body = piece.splitlines()[2:]
            assert body and all(row in all_rows for row in body)  # whole rows only
            assert words(piece) <= chunker.limit
            assert text[start:].startswith(piece if start == text.index(table) else body[0])
            seen += body
        assert seen == all_rows  # every row once, in order
        assert pieces[0][1].startswith("intro0") and pieces[-1][1] == "The end of the document."
        assert not any("|" in p for _, p in pieces if not p.startswith("| Name"))

    def test_chunk_metadata_offsets_and_headings(self, chunker):
        doc = Document(
            text="",
            source="t.md",
            title="T",
            sections=[(["Limits"], "Limits\n\n" + big_table(30)), (["Other"], "Other\n\nplain words")],
        )
        chunks = chunker.chunk(doc)
        table_chunks = [c for c in chunks if c.text.startswith("| Name")]
        assert len(table_chunks) >= 3 and all(c.metadata["headings"] == ["Limits"] for c in table_chunks)
        assert chunks[-1].metadata["headings"] == ["Other"]

    def test_row_larger_than_a_chunk_is_the_only_cut(self, chunker):
        huge = "| giant | " + " ".join(f"w{i}" for i in range(150)) + " | end |"
        text = big_table(2) + "\n" + huge + "\n| after | 1 | 2 |"
        pieces = [p for _, p in chunker.split_text(text)]
        assert all(words(p) <= chunker.limit for p in pieces)
        assert pieces[0] == big_table(2) and pieces[-1] == self.HEADER + "\n| after | 1 | 2 |"
        assert set(" ".join(pieces[1:-1]).split()) == set(huge.split())  # cut like plain text (with overlap)

    def test_text_without_tables_is_split_as_before(self, chunker):
        text = "\n\n".join(" ".join(f"p{j}w{i}" for i in range(25)) + " | pipe" for j in range(10))
        expected = chunker._splitter.split_text(text)
        assert [p for _, p in chunker.split_text(text)] == expected
