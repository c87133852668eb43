"""Regenerate the binary sample documents (a PDF and a .docx) next to this script.

    .venv/bin/python data/sample/make_binary_samples.py

Needs fpdf2 and python-docx (both in the ``dev`` extra). Dates are fixed so that reruns give
the same text and metadata.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXED_DATE = dt.datetime(2024, 1, 15, 12, 0, 0, tzinfo=dt.timezone.utc)

PDF_TITLE = "Embedding models in ragqa"
PDF_PAGES: list[tuple[str, list[str]]] = [
    (
        "Sentence embeddings",
        [
            "An embedding model maps a piece of text to a fixed-length vector so that texts with "
            "similar meaning end up close together. ragqa embeds every chunk once, at ingest time, "
            "and embeds each question at search time; retrieval is then a nearest-neighbour search "
            "between the question vector and the chunk vectors.",
            "The default model is all-MiniLM-L6-v2, a sentence-transformers model with six "
            "transformer layers and 384-dimensional output. It was trained contrastively on more "
            "than one billion sentence pairs, such as questions and their answers, so that the "
            "two halves of a pair get similar vectors. It is small enough to embed thousands of "
            "chunks per minute on a laptop CPU.",
            "Vectors are normalised to unit length, so the inner product that the FAISS index "
            "computes equals the cosine similarity. Scores therefore lie between -1 and 1, and "
            "higher is better.",
        ],
    ),
    (
        "Token limits and chunk size",
        [
            "Every embedding model reads a limited number of tokens. all-MiniLM-L6-v2 truncates "
            "its input after 256 word pieces; anything beyond that limit is silently ignored. "
            "ragqa counts chunk sizes in the embedder's own tokens for this reason, and never "
            "makes a chunk longer than the model can read.",
            "A collection remembers which embedder built it. Vectors from different models live "
            "in different spaces and cannot be compared, so searching a collection with another "
            "model is refused with an error. To change the model, ingest the documents again "
            "into a new collection.",
            "Multilingual text needs a multilingual model. The default model was trained mostly "
            "on English; for Chinese or Japanese documents choose a model trained on those "
            "languages and set it as ingest.embedder.model.",
        ],
    ),
]

DOCX_TITLE = "ragqa operations handbook"
DOCX_BODY: list[tuple[str, str]] = [
    ("Title", DOCX_TITLE),
    ("Normal", "This handbook collects the routine tasks of running ragqa for a team: backups, "
               "upgrades and monitoring. Collections live under the directory named by RAGQA_HOME."),
    ("Heading 1", "Backups"),
    ("Normal", "A collection is a plain directory. Because every file in it is replaced atomically, "
               "copying the directory gives a consistent backup even while searches are running. "
               "Avoid copying during an ingest: you would get the previous version, which is safe "
               "but may surprise you."),
    ("List Bullet", "Stop scheduled ingests before the backup window."),
    ("List Bullet", "Copy the collection directory with rsync or tar."),
    ("List Bullet", "Check the copy by running one search against it."),
    ("Heading 1", "Upgrades"),
    ("Heading 2", "Changing the embedding model"),
    ("Normal", "A collection can only be searched with the embedder that built it. After changing "
               "ingest.embedder.model, ingest the documents into a new collection, compare a few "
               "searches side by side, and then switch the service over."),
    ("Heading 2", "Upgrading ragqa itself"),
    ("Normal", "Read the release notes before upgrading. When a release changes the collection "
               "format, the notes say so; re-ingest the affected collections into new ones and "
               "keep the old directories until the new ones have been checked."),
    ("Heading 1", "Settings worth knowing"),
]
DOCX_TABLE: list[tuple[str, str, str]] = [
    ("Setting", "Default", "Meaning"),
    ("ingest.loader.max_file_mb", "50", "Files larger than this are skipped"),
    ("ingest.chunking.chunk_tokens", "200", "Chunk size in embedder tokens"),
    ("ingest.chunking.overlap_tokens", "24", "Tokens shared by neighbouring chunks"),
    ("ingest.index.kind", "flat", "FAISS index type: flat, ivf, hnsw or ivfpq"),
]
DOCX_TAIL: list[tuple[str, str]] = [
    ("Heading 1", "Monitoring"),
    ("Normal", "Watch the ingest summary: it lists files that were skipped and why. A rising number "
               "of skipped files usually means a new document source produces scanned PDFs or an "
               "unsupported format."),
]


def make_pdf(out: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_title(PDF_TITLE)
    pdf.set_author("ragqa contributors")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_margins(20, 20, 20)
    for heading, paragraphs in PDF_PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.multi_cell(0, 9, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
        pdf.set_font("Helvetica", "", 11)
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
    pdf.output(str(out))


def make_docx(out: Path) -> None:
    import docx

    document = docx.Document()
    props = document.core_properties
    props.title = DOCX_TITLE
    props.author = "ragqa contributors"
    props.created = props.modified = FIXED_DATE.replace(tzinfo=None)
    props.revision = 1
    for style, text in DOCX_BODY:
        document.add_paragraph(text, style=style)
    table = document.add_table(rows=0, cols=3)
    table.style = "Table Grid"
    for row in DOCX_TABLE:
        cells = table.add_row().cells
        for cell, text in zip(cells, row):
            cell.text = text
    for style, text in DOCX_TAIL:
        document.add_paragraph(text, style=style)
    document.save(str(out))
    _fix_zip_dates(out)


def _fix_zip_dates(path: Path) -> None:
    """Rewrite the zip with fixed member dates, so reruns give identical bytes."""
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, blob in members:
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_DATE.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(fixed, blob)


def main() -> None:
    make_pdf(HERE / "embedding-models.pdf")
    make_docx(HERE / "operations-handbook.docx")


if __name__ == "__main__":
    main()
