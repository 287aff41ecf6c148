"""vaelab.report: the comparison report's table, escaping, failed runs, flags and self-containment."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from vaelab import report
from vaelab.errors import StorageError
from vaelab.plots.figures import Panel, panel_figure, training_curves
from vaelab.report import format_estimate, write_report

EVIL = "<script>alert(1)</script> \"quoted\" 'single' & <img src=x onerror=alert(2)>"
TAGS = {"html", "head", "meta", "link", "title", "style", "body", "main", "header", "h1", "h2", "dl", "div", "dt",
        "dd", "pre", "code", "section", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "span", "b", "p",
        "figure", "img", "figcaption", "footer"}


def estimate(value, stderr=None, **settings):
    return {"value": value, "stderr": stderr, "settings": settings}


def fake_inputs(out_dir: Path, text: str = "") -> tuple[dict, dict]:
    """A summary and results for three models (one failed) and the data row, with two real PNG figures;
    `text` is appended to every string that comes from data, config or results."""
    generator = torch.Generator().manual_seed(0)
    digits = torch.rand(16, 1, 8, 8, generator=generator)
    panel_figure([Panel("vae" + text, digits, 4), Panel("gan", digits.flip(0), 4)], out_dir / "figures/samples.png")
    training_curves({"vae": [{"epoch": 1, "train_loss": 2.0, "val_loss": 2.5}, {"epoch": 2, "train_loss": 1.0}],
                     "gan": []}, out_dir / "figures/curves.png")
    columns = [
        {"key": "iw_bound" + text, "label": "L_k" + text, "protocol": "binarized" + text, "format": ".1f",
         "higher_is_better": True},
        {"key": "decoder_ais", "label": "decoder AIS", "protocol": "continuous, Gaussian obs.", "format": ".2f",
         "higher_is_better": True},
        {"key": "parzen", "label": "Parzen", "protocol": "continuous", "format": ".1f", "higher_is_better": True},
        {"key": "num_modes", "label": "modes", "protocol": "classifier", "format": "d", "higher_is_better": None},
    ]
    results = {
        "vae" + text: {"iw_bound" + text: estimate(-90.04, 0.31, k=100),
                       "decoder_ais": estimate(512.345, 2.5, converged=False, steps=100),
                       "parzen": estimate(230.0, 5.0, sigma=0.2, note=text), "num_modes": estimate(10, 0.0)},
        "gan": {"decoder_ais": estimate(498.0, None), "parzen": estimate(250.0, float("nan")),
                "num_modes": estimate(7, None)},
        "data": {"parzen": estimate(260.0, 4.0)},
    }
    summary = {
        "title": "Comparison on digits" + text,
        "data": {"name": "digits" + text, "source": "sklearn" + text, "image_shape": [1, 8, 8],
                 "train": 1200, "val": 150, "test": 447},
        "budget": "quick" + text, "seed": 0, "command": "vaelab compare --budget quick" + text,
        "protocol": ["L_k uses the binarized test images" + text, "Decoder AIS uses a Gaussian observation model."],
        "models": {
            "vae" + text: {"status": "ok", "error": None, "run_dir": "runs/vae" + text,
                           "settings": "latent_dim=2" + text},
            "gan": {"status": "ok", "error": None, "run_dir": "runs/gan", "settings": "epochs=3"},
            "rbm": {"status": "failed", "error": "out of memory" + text, "run_dir": "runs/rbm", "settings": "k=1"},
        },
        "columns": columns,
        "figures": [{"title": "Samples" + text, "path": "figures/samples.png", "caption": "same seed" + text},
                    {"title": "Training curves", "path": "figures/curves.png", "caption": ""}],
        "flags": ["rbm_ais of rbm moved by 2.1 nats" + text],
        "notes": ["1 of 3 runs failed" + text],
    }
    return summary, results


@pytest.fixture
def written(tmp_path):
    summary, results = fake_inputs(tmp_path)
    html_path, md_path = write_report(tmp_path, summary, results)
    return tmp_path, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


class Collector(HTMLParser):
    """Every start tag with its attributes, and the text outside tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Collector:
    collector = Collector()
    collector.feed(page)
    return collector


def table_rows(page: str) -> list[str]:
    body = page.split('<table class="results">')[1].split("</table>")[0].split("<tbody>")[1]
    return re.findall(r"<tr[^>]*>.*?</tr>", body)


# -- the table ------------------------------------------------------------------------------------

def test_both_files_are_written_and_returned(tmp_path):
    summary, results = fake_inputs(tmp_path)
    html_path, md_path = write_report(tmp_path, summary, results)
    assert (html_path, md_path) == (tmp_path / "report.html", tmp_path / "report.md")
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert md_path.read_text().startswith("# Comparison on digits")


def test_rows_follow_the_models_with_the_data_row_last(written):
    _, page, markdown = written
    rows = table_rows(page)
    assert [re.search(r'<th class="model" scope="row">(.*?)</th>', row).group(1) for row in rows] == \
        ["vae", "gan", "rbm", "data"]
    assert 'class="data"' in rows[3]
    md_rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[0][2:] for line in md_rows[1:5]] == ["vae", "gan", "rbm", "*data*"]


def test_cells_show_value_and_stderr_in_the_column_format(written):
    _, page, markdown = written
    vae, gan, _, data = table_rows(page)
    assert "-90.0 ± 0.3" in vae and "512.35 ± 2.50" in vae and "230.0 ± 5.0" in vae
    assert ">10<" in vae  # a count with stderr 0: no "± 0"
    assert "498.00<" in gan and "250.0<" in gan  # stderr None and NaN are left out
    assert data.count("—") == 3 and "260.0 ± 4.0" in data  # the data row has only the sample metric
    assert "| -90.0 ± 0.3 |" in markdown


def test_a_missing_metric_is_a_dash(written):
    _, page, markdown = written
    gan = table_rows(page)[1]
    assert re.search(r'<td class="num missing">—</td>', gan)  # the GAN has no L_k
    assert "| gan | — | 498.00 |" in markdown


def test_a_failed_model_spans_its_row_with_the_error(written):
    _, page, markdown = written
    rbm = table_rows(page)[2]
    assert '<td colspan="4" class="error">failed: out of memory</td>' in rbm
    assert "| rbm | failed: out of memory |  |  |  |" in markdown


def test_column_headers_carry_the_label_direction_and_protocol(written):
    _, page, markdown = written
    assert 'L_k ↑<span class="tag">binarized</span>' in page
    assert 'modes<span class="tag">classifier</span>' in page  # no direction, no arrow
    assert "| model | L_k ↑ (binarized) | decoder AIS ↑ (continuous, Gaussian obs.) |" in markdown


def test_the_best_model_of_a_column_is_bold_and_the_data_row_never_is(written):
    _, page, markdown = written
    vae, gan, _, data = table_rows(page)
    assert "<b>512.35 ± 2.50</b>" in vae  # decoder AIS: the VAE is higher
    assert "<b>250.0</b>" in gan  # Parzen: the GAN beats the VAE; the data row's 260 does not count
    assert "<b>" not in data
    assert "<b>-90.0" not in vae  # L_k: only one model has it, nothing to compare
    assert "**250.0**" in markdown


def test_an_unconverged_value_is_marked_and_flagged(written):
    _, page, markdown = written
    vae = table_rows(page)[0]
    assert '512.35 ± 2.50</b> <span class="warn" title="not converged">⚠</span>' in vae
    flags = page.split('<section class="box flags">')[1].split("</section>")[0]
    assert "rbm_ais of rbm moved by 2.1 nats" in flags  # the summary's own flag
    assert "decoder_ais of vae did not converge" in flags  # added for the marked value
    assert "**512.35 ± 2.50** ⚠" in markdown
    assert "> - decoder_ais of vae did not converge" in markdown


def test_a_flag_already_naming_the_value_is_not_repeated(tmp_path):
    summary, results = fake_inputs(tmp_path)
    summary["flags"] = ["decoder_ais of vae moved by 3 nats: not converged"]
    assert report.report_flags(summary, results) == summary["flags"]


def test_settings_become_a_tooltip(written):
    _, page, _ = written
    assert 'title="k=100"' in page
    assert 'title="converged=false; steps=100"' in page


def test_the_protocol_data_and_command_are_stated(written):
    _, page, markdown = written
    protocol = page.split('<section class="box protocol">')[1].split("</section>")[0]
    assert "L_k uses the binarized test images" in protocol and "Gaussian observation model" in protocol
    assert "digits (sklearn) · images 1\u00d78\u00d78 · train 1,200 · val 150 · test 447" in page
    assert "<code>vaelab compare --budget quick</code>" in page
    assert "**Command:** `vaelab compare --budget quick`" in markdown
    assert "## How these numbers were computed" in markdown and "- 1 of 3 runs failed" in markdown


@pytest.mark.parametrize(("value", "stderr", "spec", "text"), [
    (1.23456, 0.01234, ".2f", "1.23 ± 0.01"),
    (1.5, 0, ".1f", "1.5"),
    (1.5, float("nan"), ".1f", "1.5"),
    (3.0, None, "d", "3"),  # "d" does not take a float: the default format instead
    (7, None, "d", "7"),
    (float("inf"), None, ".1f", "∞"),
    ([1.0, 2.0], None, ".1f", "2 values: 1.0, 2.0"),
    (list(range(10)), None, "d", "10 values: 0, 1, 2, 3, 4, 5, …"),
])
def test_format_estimate(value, stderr, spec, text):
    assert format_estimate({"value": value, "stderr": stderr}, spec) == text


# -- escaping -------------------------------------------------------------------------------------

def test_every_string_from_the_inputs_is_escaped_in_the_html(tmp_path):
    summary, results = fake_inputs(tmp_path, EVIL)
    page = write_report(tmp_path, summary, results)[0].read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert EVIL not in page and "\"quoted\"" not in page
    assert page.count(html.escape(EVIL, quote=True)) >= 15
    collected = parse(page)
    assert {tag for tag, _ in collected.tags} <= TAGS
    assert not [name for _, attrs in collected.tags for name in attrs if name.startswith("on")]
    assert "alert(1)" in "".join(collected.text)  # shown to the reader, as text


def test_the_markdown_holds_no_raw_html_from_the_inputs(tmp_path):
    summary, results = fake_inputs(tmp_path, EVIL + " | pipe")
    markdown = write_report(tmp_path, summary, results)[1].read_text()
    outside_code = re.sub(r"(`+).*?\1", "", markdown)  # a code span shows its text as it is, HTML included
    assert "**Command:** `vaelab compare --budget quick<script>alert(1)</script>" in markdown
    assert "<script" not in outside_code and "<img" not in outside_code
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    table = next(line for line in markdown.splitlines() if line.startswith("| vae"))
    assert table.count(" | ") == 4 and "\\| pipe" in table  # a pipe in a name does not add a column


def test_a_command_with_backticks_stays_one_code_span():
    assert report._md_code("echo `date` and ``x``") == "``` echo `date` and ``x`` ```"
    assert report._md_code("plain") == "`plain`"


def test_a_url_in_the_data_source_is_text_not_a_reference(tmp_path):
    summary, results = fake_inputs(tmp_path)
    summary["data"]["source"] = "https://example.org/digits?a=1&b=2"
    page = write_report(tmp_path, summary, results)[0].read_text()
    assert "https://example.org/digits?a=1&amp;b=2" in page
    references = [value for _, attrs in parse(page).tags for name, value in attrs.items() if name in ("src", "href")]
    assert all(value.startswith("data:") for value in references)


# -- self-contained -------------------------------------------------------------------------------

def test_the_html_is_self_contained(written):
    out_dir, page, _ = written
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    tags = parse(page).tags
    assert not [attrs for tag, attrs in tags if tag == "link" and attrs.get("rel") == "stylesheet"]
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(images) == 2
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in images)
    assert base64.b64decode(images[0][len(prefix):]) == (out_dir / "figures/samples.png").read_bytes()


def test_figures_are_relative_links_in_the_markdown(written):
    _, _, markdown = written
    assert "![Samples](figures/samples.png)" in markdown
    assert "![Training curves](figures/curves.png)" in markdown
    assert "same seed" in markdown


def test_a_missing_figure_is_a_note_not_a_broken_image(tmp_path):
    summary, results = fake_inputs(tmp_path)
    summary["figures"].append({"title": "Chains", "path": "figures/chains.png", "caption": ""})
    (tmp_path / "figures/fake.png").write_text("not a png")
    summary["figures"].append({"title": "Fake", "path": "figures/fake.png", "caption": ""})
    page = write_report(tmp_path, summary, results)[0].read_text()
    assert page.count("<img") == 2
    assert "figure not found or not a PNG: figures/chains.png" in page
    assert "figure not found or not a PNG: figures/fake.png" in page


def test_a_report_without_models_results_or_figures_still_renders(tmp_path):
    html_path, md_path = write_report(tmp_path, {"title": "empty"}, {})
    assert "<h1>empty</h1>" in html_path.read_text() and md_path.read_text().startswith("# empty")


# -- atomic writes --------------------------------------------------------------------------------

def test_both_files_are_written_atomically(tmp_path, monkeypatch):
    summary, results = fake_inputs(tmp_path)
    written_paths = []

    def spy(path, payload):
        written_paths.append(Path(path))
        return atomic_write(path, payload)

    atomic_write = report.atomic_write_bytes
    monkeypatch.setattr(report, "atomic_write_bytes", spy)
    write_report(tmp_path, summary, results)
    assert written_paths == [tmp_path / "report.html", tmp_path / "report.md"]
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".part")]


def test_a_failure_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    summary, results = fake_inputs(tmp_path)
    write_report(tmp_path, summary, results)
    before = {name: (tmp_path / name).read_bytes() for name in ("report.html", "report.md")}
    with pytest.raises(KeyError):  # a column without a key: rendering fails before anything is written
        write_report(tmp_path, {**summary, "columns": [{"label": "no key"}]}, results)

    def full_disk(path, payload):
        raise StorageError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(report, "atomic_write_bytes", full_disk)
    with pytest.raises(StorageError):
        write_report(tmp_path, {**summary, "title": "new"}, results)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
