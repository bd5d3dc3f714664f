"""``ncdetect demo --quick`` end to end, as CI runs it: the report files exist, their numbers are finite and
the report's main table shows exactly the numbers of results.json; a second run into another folder, on the
same corpus, gives the same results.json (all but the timing fields): the demo is deterministic on CPU.

Needs the Debian packages of the demo corpus (``make debian-deps``); without them the tests skip, naming
what is missing, except under CI (``CI`` set), where a missing package is a failure.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import comparable_results

pytestmark = [pytest.mark.slow, pytest.mark.demo, pytest.mark.timeout(3600)]



def _missing() -> str | None:
    from ncdetect.demo import prompts
    from ncdetect.demo.build import check_requirements
    from ncdetect.errors import NcdetectError

    try:
        check_requirements()
        for lang in prompts.LANGUAGES.values():
            prompts.load_prompts(lang)
    except NcdetectError as err:
        return str(err)
    return None


def _run_demo(out: Path, corpus: Path) -> Path:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the demo corpus cannot be built in CI: {missing}")
        pytest.skip(f"demo packages missing: {missing}")
    proc = subprocess.run(
        [sys.executable, "-m", "ncdetect.cli", "demo", "--quick", "--out", str(out), "--corpus", str(corpus)],
        capture_output=True, text=True, timeout=3000,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("report.html")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo") / "corpus"


@pytest.fixture(scope="module")
def first(corpus) -> Path:
    return _run_demo(corpus.parent / "first", corpus)


@pytest.fixture(scope="module")
def results(first) -> dict:
    return json.loads((first / "results.json").read_text(encoding="utf-8"))


def test_report_files_exist(first, results):
    for name in ("report.md", "report.html", "results.json"):
        assert (first / name).is_file() and (first / name).stat().st_size > 0, name
    for caption, path in results["figures"].items():
        assert Path(path).is_file(), caption
    page = (first / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(results["figures"])  # self-contained


def _numbers(value, where: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, float(value)


def test_numbers_are_finite_and_in_range(results):
    numbers = list(_numbers(results))
    assert len(numbers) > 50
    assert all(math.isfinite(v) for _, v in numbers), [w for w, v in numbers if not math.isfinite(v)]
    eers = [(w, v) for w, v in numbers if re.search(r"eer", w.split(".")[-1]) and "threshold" not in w]
    assert eers and all(0.0 <= v <= 100.0 for _, v in eers), eers
    target = results["targets"][0]
    rows = results["table"]
    assert rows[0]["strategy"] == "full" and rows[0]["rate"] == 1.0
    assert {(r["strategy"], r["rate"]) for r in rows[1:]} == {
        (s, rate) for s in results["strategies"] for rate in results["rates"]}
    for row in rows:
        assert row["n_train"] > 0 and row["n_seeds"] == len(results["seeds"])
        assert row[f"eer_{target}_std"] >= 0
    # a compact set is never larger than the full one, and grows with the rate
    full = rows[0]["n_train"]
    for strategy in results["strategies"]:
        sizes = [r["n_train"] for r in sorted(rows, key=lambda r: r["rate"]) if r["strategy"] == strategy]
        assert sizes == sorted(sizes) and sizes[-1] <= full


def _main_table_md(md: str) -> list[list[str]]:
    section = md.split("## Main table", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = []
    for line in lines[2:]:  # after the header and the separator
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _main_table_html(page: str) -> list[list[str]]:
    section = page.split("<h2>Main table</h2>", 1)[1]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def _mean_std(cell: str) -> tuple[float, float]:
    parts = [float(x) for x in cell.split("±")]
    return parts[0], parts[1] if len(parts) > 1 else 0.0


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_report_main_table_shows_the_numbers_of_results_json(first, results, fmt):
    text = (first / f"report.{fmt}").read_text(encoding="utf-8")
    rows = _main_table_md(text) if fmt == "md" else _main_table_html(text)
    table = results["table"]
    targets = results["targets"]
    assert len(rows) == len(table)
    for cells, row in zip(rows, table, strict=True):
        name = "full data" if row["strategy"] == "full" else f"{row['strategy']}@{row['rate']:g}"
        assert cells[0] == name
        for i, target in enumerate(targets):
            # the cell is results.json's number rounded to 2 decimals (with ± std over several seeds)
            mean, std = row[f"eer_{target}_mean"], row[f"eer_{target}_std"]
            assert cells[1 + i] == (f"{mean:.2f} ± {std:.2f}" if row["n_seeds"] > 1 else f"{mean:.2f}"), name
            shown_mean, _ = _mean_std(cells[1 + i])
            assert abs(shown_mean - mean) <= 0.005 + 1e-9
        assert int(cells[1 + len(targets)]) == row["n_train"]
        assert int(cells[2 + len(targets)]) == row["steps"]
        assert cells[3 + len(targets)] == f"{row['epochs']:g}"
        assert cells[4 + len(targets)] == f"{row['train_seconds']:.1f}"
        # then minDCF and actDCF (calibrated on the sources' dev sets) per target, to 3 decimals
        for i, (target, metric) in enumerate((t, m) for t in targets for m in ("min_dcf", "act_dcf")):
            mean, std = row[f"{metric}_{target}_mean"], row[f"{metric}_{target}_std"]
            if mean is None:  # a seed's model left uncalibrated (its dev scores ran the wrong way)
                assert metric == "act_dcf" and cells[5 + len(targets) + i] == "–", name
                continue
            assert cells[5 + len(targets) + i] == (f"{mean:.3f} ± {std:.3f}" if row["n_seeds"] > 1
                                                   else f"{mean:.3f}"), name
    head = results["headline"]
    if head["per_rate"]:
        counts = head["verdicts"]
        assert (f"sampling is better than random sampling at {counts['better']} of {head['rates_compared']} "
                f"rates, worse at {counts['worse']}, and not separated at {counts['not separated']}") in text


def test_a_second_run_gives_the_same_results(first, results, corpus):
    second = _run_demo(corpus.parent / "second", corpus)
    again = json.loads((second / "results.json").read_text(encoding="utf-8"))
    assert comparable_results(again, second) == comparable_results(results, first)
