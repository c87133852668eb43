"""Tests of ingest.loaders: one class per loader, files built in tmp_path."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError, UnsupportedFileError
from ingest.loaders import LOADERS, SUPPORTED_SUFFIXES, is_supported, load_file
from ingest.squad import SquadFormatError, iter_paragraphs, iter_questions, parse_squad, read_squad, to_json

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
SQUAD_BENCH = REPO / "data" / "benchmarks" / "squad2_dev_public.json"
PYDOCS = Path("/usr/share/doc/python3.11/html")

CFG = LoaderConfig()


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def only(docs: list[Document]) -> Document:
    assert len(docs) == 1, f"expected one document, got {len(docs)}"
    return docs[0]


def assert_sections_cover_text(doc: Document) -> None:
    """Sections joined by blank lines give back the full text (the chunker relies on it)."""
    assert doc.sections is not None
    assert "\n\n".join(body for _, body in doc.sections) == doc.text


# --- registry and shared checks ------------------------------------------------------------


class TestRegistry:
    def test_supported_suffixes(self):
        for suffix in (".txt", ".md", ".html", ".htm", ".pdf", ".docx", ".json", ".jsonl"):
            assert suffix in SUPPORTED_SUFFIXES
            assert callable(LOADERS[suffix])
        assert ".py" not in SUPPORTED_SUFFIXES

    def test_is_supported_ignores_case(self):
        assert is_supported(Path("a/B.PDF"))
        assert is_supported("notes.Md")
        assert not is_supported("script.py")
        assert not is_supported("README")

    def test_unsupported_suffix_lists_supported_types(self, tmp_path):
        path = write(tmp_path / "data.xyz", "hello")
        with pytest.raises(UnsupportedFileError) as err:
            load_file(path, CFG)
        message = str(err.value)
        assert ".xyz" in message
        assert ".pdf" in message and ".md" in message and ".jsonl" in message

    def test_empty_file(self, tmp_path):
        with pytest.raises(EmptyDocumentError, match="empty"):
            load_file(write(tmp_path / "empty.txt", b""), CFG)

    @pytest.mark.parametrize("name", ["blank.txt", "blank.md", "blank.html", "blank.jsonl"])
    def test_whitespace_only(self, tmp_path, name):
        with pytest.raises(EmptyDocumentError):
            load_file(write(tmp_path / name, " \n\t\r\n   \n"), CFG)

    def test_html_with_only_scripts_is_empty(self, tmp_path):
        path = write(tmp_path / "s.html", "<html><body><script>var x = 1;</script><nav>Home</nav></body></html>")
        with pytest.raises(EmptyDocumentError):
            load_file(path, CFG)

    def test_oversized_file(self, tmp_path):
        path = write(tmp_path / "big.txt", "word " * 2000)  # 10 kB
        with pytest.raises(LoaderError) as err:
            load_file(path, LoaderConfig(max_file_mb=0.001))
        message = str(err.value)
        assert "larger than the limit 0.001 MB" in message
        assert "ingest.loader.max_file_mb" in message
        assert load_file(path, LoaderConfig(max_file_mb=1))  # fits under a larger limit

    def test_missing_file(self, tmp_path):
        with pytest.raises(LoaderError, match="not found"):
            load_file(tmp_path / "nope.txt", CFG)

    def test_directory(self, tmp_path):
        folder = tmp_path / "folder.txt"
        folder.mkdir()
        with pytest.raises(LoaderError, match="not a regular file"):
            load_file(folder, CFG)

    def test_permission_denied(self, tmp_path, monkeypatch):
        path = write(tmp_path / "secret.txt", "top secret")

        def deny(self):
            raise PermissionError(13, "Permission denied", str(self))

        # chmod cannot be used: the tests may run as root, who reads everything.
        monkeypatch.setattr(Path, "read_bytes", deny)
        with pytest.raises(LoaderError, match="permission denied"):
            load_file(path, CFG)

    def test_source_is_resolved_path(self, tmp_path, monkeypatch):
        write(tmp_path / "rel.txt", "relative path")
        monkeypatch.chdir(tmp_path)
        doc = only(load_file(Path("rel.txt"), CFG))
        assert doc.source == str((tmp_path / "rel.txt").resolve())

    def test_unexpected_loader_failure_becomes_loader_error(self, tmp_path, monkeypatch):
        from ingest.loaders import registry

        def broken(path, data, config):
            raise KeyError("internal")

        monkeypatch.setattr(registry, "LOADERS", {**registry.LOADERS, ".txt": broken})
        with pytest.raises(LoaderError, match="unexpected error") as err:
            load_file(write(tmp_path / "x.txt", "text"), CFG)
        assert isinstance(err.value.__cause__, KeyError)

    def test_errors_are_loader_errors(self):
        assert issubclass(UnsupportedFileError, LoaderError)
        assert issubclass(EmptyDocumentError, LoaderError)


# --- plain text ----------------------------------------------------------------------------

WESTERN = "Le café de la gare est fermé le dimanche. Où est la crème brûlée? Ça coûte très cher à Noël.\n"
CP1252 = "He said \u201cthe price is 20\u20ac\u201d \u2014 it\u2019s a bargain, isn\u2019t it? Caf\u00e9 na\u00efve.\n"
CHINESE = "检索增强生成是一种把信息检索和文本生成结合起来的问答方法。系统先在文档库中找出与问题最相关的段落。\n"
JAPANESE = "日本語のテキストです。検索拡張生成は、文書を検索してから回答を生成する方法です。\n"


class TestTextLoader:
    def test_content_title_metadata(self, tmp_path):
        path = write(tmp_path / "meeting-notes.txt", "First line.\n\nSecond paragraph.\n")
        doc = only(load_file(path, CFG))
        assert doc.text == "First line.\n\nSecond paragraph."
        assert doc.title == "meeting-notes"
        assert doc.key == ""
        assert doc.source == str(path.resolve())
        assert doc.metadata["encoding"] == "utf-8"
        assert doc.sections is None

    def test_newlines_normalised(self, tmp_path):
        doc = only(load_file(write(tmp_path / "n.txt", b"a\r\nb\rc\n"), CFG))
        assert doc.text == "a\nb\nc"

    @pytest.mark.parametrize(
        ("text", "encoding"),
        [
            (WESTERN, "latin-1"),
            (CP1252, "cp1252"),
            (WESTERN + CHINESE, "utf-16"),  # with BOM
            (WESTERN + CHINESE, "utf-8-sig"),
            (WESTERN, "utf-32"),
            (CHINESE * 2, "gb18030"),
            (JAPANESE * 2, "shift_jis"),
        ],
    )
    def test_encodings_decoded(self, tmp_path, text, encoding):
        path = write(tmp_path / f"{encoding}.txt", text.encode(encoding))
        doc = only(load_file(path, CFG))
        assert doc.text == text.strip()
        assert not doc.text.startswith("\ufeff")

    def test_utf16_big_endian_bom(self, tmp_path):
        data = b"\xfe\xff" + (WESTERN + CHINESE).encode("utf-16-be")
        doc = only(load_file(write(tmp_path / "be.txt", data), CFG))
        assert doc.text == (WESTERN + CHINESE).strip()

    def test_binary_garbage_is_rejected(self, tmp_path):
        data = bytes(range(256)) * 8
        with pytest.raises(LoaderError):
            load_file(write(tmp_path / "binary.txt", data), CFG)


# --- Markdown ------------------------------------------------------------------------------

MARKDOWN = """\
Intro before any heading.

# Tutorial

Welcome.

## 4. More Control Flow

Some text.

### 4.1 if Statements

```python
# not a heading
if x:
    pass
```

## 5. Data Structures

Lists.

Setext heading
--------------

Under setext.
"""


class TestMarkdownLoader:
    def test_title_is_first_h1(self, tmp_path):
        doc = only(load_file(write(tmp_path / "guide.md", MARKDOWN), CFG))
        assert doc.title == "Tutorial"
        assert doc.metadata["format"] == "markdown"

    def test_sections_have_heading_paths(self, tmp_path):
        doc = only(load_file(write(tmp_path / "guide.md", MARKDOWN), CFG))
        paths = [path for path, _ in doc.sections]
        assert paths == [
            [],
            ["Tutorial"],
            ["Tutorial", "4. More Control Flow"],
            ["Tutorial", "4. More Control Flow", "4.1 if Statements"],
            ["Tutorial", "5. Data Structures"],
            ["Tutorial", "Setext heading"],
        ]
        bodies = dict((tuple(p), b) for p, b in doc.sections)
        code_section = bodies[("Tutorial", "4. More Control Flow", "4.1 if Statements")]
        assert "# not a heading\nif x:\n    pass" in code_section  # fenced code kept verbatim
        assert bodies[()] == "Intro before any heading."

    def test_text_is_full_text(self, tmp_path):
        doc = only(load_file(write(tmp_path / "guide.md", MARKDOWN), CFG))
        assert doc.text == MARKDOWN.strip()
        assert_sections_cover_text(doc)

    def test_no_heading_uses_stem(self, tmp_path):
        doc = only(load_file(write(tmp_path / "plain-notes.md", "Just a paragraph.\n"), CFG))
        assert doc.title == "plain-notes"
        assert doc.sections == [([], "Just a paragraph.")]

    def test_front_matter_title(self, tmp_path):
        text = "---\ntitle: From Front Matter\ntags: [a]\n---\n\n## Part\n\nBody.\n"
        doc = only(load_file(write(tmp_path / "fm.md", text), CFG))
        assert doc.title == "From Front Matter"
        assert "tags:" not in doc.text
        assert doc.sections == [(["Part"], "## Part\n\nBody.")]


# --- HTML ----------------------------------------------------------------------------------

SPHINX_PAGE = """\
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>4. Control Flow &#8212; Docs</title>
<script>var tracking = "SCRIPT_TEXT";</script><style>.x { color: red } STYLE_TEXT</style></head>
<body>
<div class="related" role="navigation"><h3>Navigation</h3><ul><li><a href="#">RELATED_LINK</a></li></ul></div>
<header>HEADER_TEXT</header>
<nav>NAV_TEXT</nav>
<div class="document"><div class="documentwrapper"><div class="bodywrapper">
<div class="body" role="main">
<section id="control"><h1>4. Control Flow<a class="headerlink" href="#control">¶</a></h1>
<p>Besides the <code>while</code>   statement,
Python has others.</p>
<section id="if"><h2><span class="section-number">4.1. </span>if Statements<a class="headerlink" href="#if">¶</a></h2>
<div class="highlight"><pre><span class="gp">&gt;&gt;&gt; </span>if x &lt; 0:
<span class="gp">... </span>    x = 0
</pre></div>
<ul><li>first item</li><li>second <em>item</em></li></ul>
<ol><li>one</li><li>two</li></ol>
<table><tr><th>Name</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
<p>Line one<br>line two</p>
<p hidden>HIDDEN_TEXT</p>
</section>
<section id="for"><h2>4.2. for Statements</h2><p>Iterate.</p>
<section id="deep"><h3>4.2.1. Nested</h3><p>Deep text.</p>
<dl class="py function"><dt class="sig" id="f">f(x)<a class="headerlink" href="#f">¶</a></dt><dd><p>Does f.</p></dd></dl></section>
</section>
</section>
</div></div></div>
<div class="sphinxsidebar"><h3>Table of Contents</h3><p>SIDEBAR_TEXT</p></div>
</div>
<div class="footer">FOOTER_DIV_TEXT</div>
<footer>FOOTER_TEXT</footer>
</body></html>
"""


class TestHtmlLoader:
    @pytest.fixture
    def doc(self, tmp_path) -> Document:
        return only(load_file(write(tmp_path / "controlflow.html", SPHINX_PAGE), CFG))

    def test_chrome_and_scripts_dropped(self, doc):
        for junk in (
            "SCRIPT_TEXT", "STYLE_TEXT", "RELATED_LINK", "Navigation", "HEADER_TEXT", "NAV_TEXT",
            "SIDEBAR_TEXT", "Table of Contents", "FOOTER_DIV_TEXT", "FOOTER_TEXT", "HIDDEN_TEXT", "¶",
        ):  # fmt: skip
            assert junk not in doc.text, junk

    def test_headings_and_paragraphs_kept(self, doc):
        assert doc.text.startswith(
            "4. Control Flow\n\nBesides the while statement, Python has others.\n\n4.1. if Statements"
        )
        assert "4.2. for Statements\n\nIterate." in doc.text

    def test_pre_keeps_line_breaks(self, doc):
        assert ">>> if x < 0:\n...     x = 0" in doc.text

    def test_lists_tables_and_breaks(self, doc):
        assert "- first item\n- second item" in doc.text
        assert "1. one\n2. two" in doc.text
        assert "| Name | Value |\n| --- | --- |\n| a | 1 |" in doc.text
        assert "Line one\nline two" in doc.text

    def test_title_from_h1(self, doc):
        assert doc.title == "4. Control Flow"
        assert doc.metadata["html_title"] == "4. Control Flow — Docs"

    def test_sections(self, doc):
        paths = [path for path, _ in doc.sections]
        assert paths == [
            ["4. Control Flow"],
            ["4. Control Flow", "4.1. if Statements"],
            ["4. Control Flow", "4.2. for Statements"],
            ["4. Control Flow", "4.2. for Statements", "4.2.1. Nested"],
        ]
        assert doc.sections[-1][1] == "4.2.1. Nested\n\nDeep text.\n\nf(x)\n\nDoes f."
        assert_sections_cover_text(doc)

    def test_page_chrome_dropped_without_main_element(self, tmp_path):
        page = (
            "<html><body><header><a>Home</a> SITE_HEADER</header>"
            "<div role='navigation'>ROLE_NAV</div><div style='display: none'>INVISIBLE</div>"
            "<p>Body text.</p><aside aria-hidden='true'>ARIA_HIDDEN</aside>"
            "<footer>SITE_FOOTER</footer></body></html>"
        )
        doc = only(load_file(write(tmp_path / "plain.html", page), CFG))
        assert doc.text == "Body text."

    def test_article_header_kept(self, tmp_path):
        page = (
            "<html><body><header>SITE_HEADER</header><article><header><h1>Post title</h1>"
            "<p>By Ann</p></header><p>Post body.</p><footer>Tags: a</footer></article></body></html>"
        )
        doc = only(load_file(write(tmp_path / "post.html", page), CFG))
        assert doc.title == "Post title"
        assert doc.text == "Post title\n\nBy Ann\n\nPost body.\n\nTags: a"

    def test_title_falls_back_to_title_tag_then_stem(self, tmp_path):
        doc = only(
            load_file(
                write(tmp_path / "a.html", "<html><head><title>Page T</title></head><body><p>x</p></body></html>"), CFG
            )
        )
        assert doc.title == "Page T"
        doc = only(load_file(write(tmp_path / "stem-name.html", "<p>only a paragraph</p>"), CFG))
        assert doc.title == "stem-name"
        assert doc.text == "only a paragraph"

    def test_declared_latin1_charset(self, tmp_path):
        page = '<html><head><meta charset="iso-8859-1"></head><body><p>Crème brûlée à Noël</p></body></html>'
        doc = only(load_file(write(tmp_path / "l1.html", page.encode("latin-1")), CFG))
        assert doc.text == "Crème brûlée à Noël"

    def test_xml_declaration_accepted(self, tmp_path):
        page = '<?xml version="1.0" encoding="utf-8"?>\n<html><body><h1>X</h1><p>é</p></body></html>'
        doc = only(load_file(write(tmp_path / "x.xhtml", page), CFG))
        assert doc.text == "X\n\né"

    @pytest.mark.skipif(not PYDOCS.is_dir(), reason="Python 3.11 HTML docs not installed")
    def test_python_docs_page(self):
        doc = only(load_file(PYDOCS / "tutorial" / "controlflow.html", CFG))
        assert doc.title == "4. More Control Flow Tools"
        assert ["4. More Control Flow Tools", "4.1. if Statements"] in [p for p, _ in doc.sections]
        for junk in (
            "¶",
            "Navigation",
            "Table of Contents",
            "Previous topic",
            "Quick search",
            "Python 3.11.2 documentation",
        ):
            assert junk not in doc.text, junk
        assert ">>> for w in words:\n...     print(w, len(w))" in doc.text


# --- PDF -----------------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[str], title: str | None = None, **encryption) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    if encryption:
        pdf.set_encryption(**encryption)
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
        else:
            pdf.rect(20, 20, 50, 50)  # a page with a drawing and no text
    pdf.output(str(path))
    return path


class TestPdfLoader:
    def test_one_document_per_page(self, tmp_path):
        path = make_pdf(
            tmp_path / "report.pdf", ["Alpha page text.", "Beta page text.", "Gamma page."], title="Quarterly Report"
        )
        docs = load_file(path, CFG)
        assert [d.key for d in docs] == ["page-1", "page-2", "page-3"]
        assert [d.metadata["page"] for d in docs] == [1, 2, 3]
        assert "Beta page text." in docs[1].text and "Alpha" not in docs[1].text
        assert all(d.title == "Quarterly Report" and d.source == str(path.resolve()) for d in docs)
        assert len({d.doc_id for d in docs}) == 3

    def test_title_falls_back_to_stem(self, tmp_path):
        docs = load_file(make_pdf(tmp_path / "untitled-scan.pdf", ["Some text."]), CFG)
        assert docs[0].title == "untitled-scan"

    def test_page_without_text_skipped_keeps_numbers(self, tmp_path):
        docs = load_file(make_pdf(tmp_path / "gap.pdf", ["First.", "", "Third."]), CFG)
        assert [d.metadata["page"] for d in docs] == [1, 3]

    def test_no_text_at_all(self, tmp_path):
        with pytest.raises(EmptyDocumentError, match="OCR"):
            load_file(make_pdf(tmp_path / "scan.pdf", ["", ""]), CFG)

    def test_corrupt_pdf(self, tmp_path):
        path = write(tmp_path / "broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R" + bytes(range(256)))
        with pytest.raises(LoaderError, match="corrupt"):
            load_file(path, CFG)

    def test_not_a_pdf(self, tmp_path):
        with pytest.raises(LoaderError, match="not a PDF"):
            load_file(write(tmp_path / "fake.pdf", "just text, no PDF header"), CFG)

    def test_encrypted_pdf(self, tmp_path):
        path = make_pdf(tmp_path / "locked.pdf", ["Secret text."], owner_password="owner", user_password="user")
        with pytest.raises(LoaderError, match="encrypted"):
            load_file(path, CFG)

    def test_owner_only_encryption_opens(self, tmp_path):
        path = make_pdf(tmp_path / "restricted.pdf", ["Readable text."], owner_password="owner")
        assert "Readable text." in only(load_file(path, CFG)).text


# --- DOCX ----------------------------------------------------------------------------------


def make_docx(path: Path, core_title: str | None = "Handbook", with_headings: bool = True) -> Path:
    import docx

    document = docx.Document()
    if core_title:
        document.core_properties.title = core_title
    document.add_paragraph("Opening paragraph.")
    if with_headings:
        document.add_heading("Setup", level=1)
    document.add_paragraph("Install it.")
    if with_headings:
        document.add_heading("Linux", level=2)
    document.add_paragraph("Use apt.")
    document.add_paragraph("first step", style="List Bullet")
    document.add_paragraph("second step", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Key", "Value"), ("port", "8080")]):
        for c, text in enumerate(row):
            table.cell(r, c).text = text
    if with_headings:
        document.add_heading("Usage", level=1)
    document.add_paragraph("Run it.")
    document.save(str(path))
    return path


class TestDocxLoader:
    def test_text_tables_and_title(self, tmp_path):
        doc = only(load_file(make_docx(tmp_path / "h.docx"), CFG))
        assert doc.title == "Handbook"
        assert doc.text.startswith("Opening paragraph.\n\nSetup\n\nInstall it.")
        assert "- first step\n- second step" in doc.text
        assert "| Key | Value |\n| --- | --- |\n| port | 8080 |" in doc.text
        assert doc.text.endswith("Usage\n\nRun it.")

    def test_heading_sections(self, tmp_path):
        doc = only(load_file(make_docx(tmp_path / "h.docx"), CFG))
        assert [p for p, _ in doc.sections] == [[], ["Setup"], ["Setup", "Linux"], ["Usage"]]
        assert "port | 8080" in dict((tuple(p), b) for p, b in doc.sections)[("Setup", "Linux")]
        assert_sections_cover_text(doc)

    def test_title_falls_back_to_heading_then_stem(self, tmp_path):
        doc = only(load_file(make_docx(tmp_path / "a.docx", core_title=None), CFG))
        assert doc.title == "Setup"
        doc = only(load_file(make_docx(tmp_path / "no-headings.docx", core_title=None, with_headings=False), CFG))
        assert doc.title == "no-headings"

    def test_not_a_zip(self, tmp_path):
        with pytest.raises(LoaderError, match="not a valid .docx"):
            load_file(write(tmp_path / "old.docx", b"\xd0\xcf\x11\xe0 an old binary .doc"), CFG)

    def test_zip_without_word_parts(self, tmp_path):
        path = tmp_path / "empty-zip.docx"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("hello.txt", "not a word document")
        with pytest.raises(LoaderError, match="docx"):
            load_file(path, CFG)

    def test_truncated_docx(self, tmp_path):
        good = make_docx(tmp_path / "good.docx").read_bytes()
        with pytest.raises(LoaderError):
            load_file(write(tmp_path / "cut.docx", good[: len(good) // 2]), CFG)


# --- JSON and JSON Lines -------------------------------------------------------------------


class TestJsonLoader:
    def test_list_of_records(self, tmp_path):
        records = [{"title": "A", "text": "alpha text", "id": 7}, {"title": "B", "text": "beta text"}]
        docs = load_file(write(tmp_path / "r.json", json.dumps(records)), CFG)
        assert [(d.key, d.title, d.text) for d in docs] == [("0", "A", "alpha text"), ("1", "B", "beta text")]
        assert docs[0].metadata["fields"] == {"id": 7}
        assert docs[0].metadata["record"] == 0

    def test_configured_fields(self, tmp_path):
        records = [{"heading": "H", "body": {"content": "nested body"}}]
        config = LoaderConfig(json_text_field="body.content", json_title_field="heading")
        doc = only(load_file(write(tmp_path / "c.json", json.dumps(records)), config))
        assert (doc.title, doc.text) == ("H", "nested body")

    def test_single_object(self, tmp_path):
        doc = only(load_file(write(tmp_path / "one.json", json.dumps({"text": "solo", "title": "S"})), CFG))
        assert (doc.key, doc.title, doc.text) == ("0", "S", "solo")

    def test_missing_text_field_names_setting(self, tmp_path):
        path = write(tmp_path / "m.json", json.dumps([{"body": "x"}, {"body": "y"}]))
        with pytest.raises(LoaderError) as err:
            load_file(path, CFG)
        assert "json_text_field" in str(err.value) and "body" in str(err.value)

    def test_invalid_json_names_line_and_column(self, tmp_path):
        path = write(tmp_path / "bad.json", '[\n  {"text": "ok"},\n  {"text": oops}\n]')
        with pytest.raises(LoaderError, match=r"line 3 column 12"):
            load_file(path, CFG)

    def test_empty_list(self, tmp_path):
        with pytest.raises(EmptyDocumentError):
            load_file(write(tmp_path / "e.json", "[]"), CFG)

    def test_json_lines_saved_as_json(self, tmp_path):
        docs = load_file(write(tmp_path / "lines.json", '{"text": "a"}\n{"text": "b"}\n'), CFG)
        assert [d.text for d in docs] == ["a", "b"]

    def test_data_wrapper_that_is_not_squad(self, tmp_path):
        path = write(tmp_path / "w.json", json.dumps({"data": [{"text": "wrapped", "title": "W"}]}))
        doc = only(load_file(path, CFG))
        assert (doc.title, doc.text, doc.metadata["format"]) == ("W", "wrapped", "json")


class TestJsonlLoader:
    def test_one_document_per_line(self, tmp_path):
        lines = [json.dumps({"title": f"T{i}", "text": f"text {i}"}) for i in range(3)]
        docs = load_file(write(tmp_path / "f.jsonl", "\n".join(lines) + "\n\n"), CFG)
        assert [(d.key, d.title, d.text, d.metadata["line"]) for d in docs] == [
            ("0", "T0", "text 0", 1), ("1", "T1", "text 1", 2), ("2", "T2", "text 2", 3),
        ]  # fmt: skip

    def test_bad_lines_skipped_and_logged(self, tmp_path, caplog):
        content = '{"text": "good one"}\n{"text": broken\n\n{"text": "good two"}\nnot json\n'
        with caplog.at_level(logging.WARNING, logger="ingest.loaders"):
            docs = load_file(write(tmp_path / "mixed.jsonl", content), CFG)
        assert [d.text for d in docs] == ["good one", "good two"]
        assert [d.key for d in docs] == ["0", "3"]  # keys follow the line, not the count
        assert "line 2" in caplog.text and "line 5" in caplog.text

    def test_no_good_line_raises_with_line_number(self, tmp_path):
        with pytest.raises(LoaderError, match="line 1 column"):
            load_file(write(tmp_path / "all-bad.jsonl", "{oops\n[1, 2\n"), CFG)

    def test_utf16_jsonl(self, tmp_path):
        content = json.dumps({"text": "Grüße 你好"}, ensure_ascii=False) + "\n"
        doc = only(load_file(write(tmp_path / "u16.jsonl", content.encode("utf-16")), CFG))
        assert doc.text == "Grüße 你好"


# --- SQuAD ---------------------------------------------------------------------------------

MINI_SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "Normans",
            "paragraphs": [
                {"context": "The Normans were the people of Normandy.", "qas": [{"question": "Who?", "id": "q1", "answers": [{"text": "The Normans", "answer_start": 0}], "is_impossible": False}]},
                {"context": "Rollo was their leader.", "qas": []},
            ],
        },
        {
            "title": "Physics",
            "paragraphs": [{"context": "Energy is conserved.", "qas": [{"question": "What is conserved?", "id": "q2", "answers": [], "is_impossible": True}]}],
        },
    ],
}  # fmt: skip


class TestSquadLoader:
    def test_paragraph_documents(self, tmp_path):
        docs = load_file(write(tmp_path / "mini-squad.json", json.dumps(MINI_SQUAD)), CFG)
        assert [(d.key, d.title, d.text) for d in docs] == [
            ("Normans/0", "Normans", "The Normans were the people of Normandy."),
            ("Normans/1", "Normans", "Rollo was their leader."),
            ("Physics/0", "Physics", "Energy is conserved."),
        ]
        assert docs[1].metadata["title"] == "Normans" and docs[1].metadata["paragraph"] == 1
        assert docs[0].metadata["format"] == "squad"
        assert all("Who?" not in d.text for d in docs)  # questions stay out of the corpus

    def test_duplicate_titles_get_distinct_keys(self, tmp_path):
        data = {"data": [MINI_SQUAD["data"][1], MINI_SQUAD["data"][1]]}
        docs = load_file(write(tmp_path / "dup.json", json.dumps(data)), CFG)
        assert len({d.doc_id for d in docs}) == 2

    @pytest.mark.skipif(not SQUAD_BENCH.exists(), reason="benchmark file not present")
    def test_benchmark_file(self):
        docs = load_file(SQUAD_BENCH, CFG)
        assert len(docs) == 126
        assert {d.title for d in docs} == {"Normans", "Computational_complexity_theory", "Southern_California"}
        assert len({d.doc_id for d in docs}) == 126
        raw = json.loads(SQUAD_BENCH.read_text(encoding="utf-8"))
        assert docs[0].text == raw["data"][0]["paragraphs"][0]["context"]  # verbatim: answer offsets hold


class TestSquadReader:
    def test_typed_articles_paragraphs_and_questions(self, tmp_path):
        data = read_squad(write(tmp_path / "mini.json", json.dumps(MINI_SQUAD)))
        assert data.version == "v2.0" and [a.title for a in data] == ["Normans", "Physics"]
        assert [(a.title, p.index, p.context) for a, p in iter_paragraphs(data)] == [
            ("Normans", 0, "The Normans were the people of Normandy."),
            ("Normans", 1, "Rollo was their leader."),
            ("Physics", 0, "Energy is conserved."),
        ]
        q1 = data.articles[0].paragraphs[0].questions[0]
        assert (q1.qid, q1.question, q1.answer_texts, q1.answers[0].answer_start) == ("q1", "Who?", ["The Normans"], 0)
        assert q1.answerable
        assert [q.qid for _, _, q in iter_questions(data)] == ["q1", "q2"]
        assert [q.qid for _, _, q in iter_questions(data, answerable=True)] == ["q1"]
        assert [(a.title, q.qid) for a, _, q in iter_questions(data, answerable=False)] == [("Physics", "q2")]

    def test_question_without_answers_is_unanswerable_and_ids_default_to_position(self):
        obj = {
            "data": [
                {
                    "title": "T",
                    "paragraphs": [
                        {
                            "context": "c",
                            "qas": [
                                {"question": "a?", "answers": [{"text": "", "answer_start": 0}]},
                                {"question": "b?", "answers": [{"text": "c", "answer_start": 0}]},
                            ],
                        }
                    ],
                }
            ]
        }
        qs = [q for _, _, q in iter_questions(parse_squad(obj))]
        assert [(q.qid, q.is_impossible, q.answerable) for q in qs] == [("0", False, False), ("1", False, True)]

    def test_bad_entries_are_skipped_and_indices_kept(self, caplog):
        obj = {"data": ["junk", {"title": "T", "paragraphs": ["junk", {"context": "x", "qas": [{"id": "no text"}]}]}]}
        with caplog.at_level(logging.WARNING):
            data = parse_squad(obj, "bad.json")
        assert [(a.index, [p.index for p in a.paragraphs]) for a in data] == [(1, [1])]
        assert data.articles[0].paragraphs[0].questions == ()
        assert sum("skipped" in r.message for r in caplog.records) == 3

    def test_not_squad_is_a_clear_error(self, tmp_path):
        with pytest.raises(SquadFormatError, match="not SQuAD format"):
            read_squad(write(tmp_path / "list.json", "[1, 2]"))
        with pytest.raises(SquadFormatError, match="cannot read SQuAD data"):
            read_squad(tmp_path / "missing.json")

    def test_to_json_round_trips(self):
        data = parse_squad(MINI_SQUAD)
        assert parse_squad(to_json(data.articles[1:])).articles[0].paragraphs == data.articles[1].paragraphs

    @pytest.mark.skipif(not SQUAD_BENCH.exists(), reason="benchmark file not present")
    def test_benchmark_file(self):
        data = read_squad(SQUAD_BENCH)
        assert len(list(iter_paragraphs(data))) == 126
        assert len(list(iter_questions(data, answerable=True))) == 473


# --- the sample corpus ---------------------------------------------------------------------


class TestSampleCorpus:
    def test_every_sample_loads(self):
        files = sorted(p for p in SAMPLE.iterdir() if is_supported(p))
        assert {p.suffix for p in files} >= {".md", ".html", ".txt", ".jsonl", ".pdf", ".docx"}
        for path in files:
            docs = load_file(path, CFG)
            assert docs and all(d.text.strip() for d in docs), path
            for doc in docs:
                json.dumps(doc.metadata)  # metadata must be JSON-serialisable
                assert doc.title and doc.source == str(path.resolve())

    def test_small(self):
        assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 100_000

    def test_expected_content(self):
        guide = only(load_file(SAMPLE / "ingestion-guide.md", CFG))
        assert "a write either lands completely or not at all" in guide.text
        assert ["How ragqa ingestion works", "Crash safety"] in [p for p, _ in guide.sections]
        faiss = only(load_file(SAMPLE / "faiss-index-types.html", CFG))
        assert all(word in faiss.text for word in ("HNSW", "IVF", "product quantisation"))
        assert "analytics" not in faiss.text
        assert "检索增强生成" in only(load_file(SAMPLE / "rag-overview-zh.txt", CFG)).text
        assert len(load_file(SAMPLE / "embedding-models.pdf", CFG)) == 2
        assert len(load_file(SAMPLE / "faq.jsonl", CFG)) == 8
