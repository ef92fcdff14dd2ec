"""fiqnn report: the numbers in the report are those of metrics.json; the HTML is self-contained."""

from __future__ import annotations

import json
import re

from fiqnn.jobs import MODEL_FILE


def test_report_matches_metrics(cli, digits_student, tmp_path):
    code, out, _ = cli("report", str(digits_student), "--out", str(tmp_path), "--json")
    assert code == 0
    paths = json.loads(out)
    m = json.loads((digits_student / "metrics.json").read_text())
    md = (tmp_path / "report.md").read_text()
    assert f"| integer test accuracy (numpy executor) | {m['test_acc']:.2f}% |" in md
    assert f"| teacher QNN (BN + fake quant), test | {m['teacher_qnn_acc']:.2f}% |" in md
    assert f"| float BN teacher, test | {m['teacher_acc']:.2f}% |" in md
    assert f"| test images | {m['test_images']:,} |" in md
    assert "| bit-exact: torch student == integer executor | yes (max abs logit difference 0) |" in md
    for h in m["history"]:
        assert f"| {h['phase']} | {h['epochs']} | {h['val_acc']:.2f}% |" in md
    for name in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "report.html").read_text()
    assert paths["html"].endswith("report.html") and f"{m['test_acc']:.2f}%" in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    assert "conv1" in html and "headroom" in html


def test_report_of_unfinished_run_exits_2(cli, digits_student, tmp_path):
    run = tmp_path / "half"
    run.mkdir()
    for name in ("config.json", "metrics.json"):
        (run / name).write_bytes((digits_student / name).read_bytes())
    code, _, err = cli("report", str(run))
    assert code == 2 and len(err) == 1 and MODEL_FILE in err[0]
    assert not (run / "report.md").exists()
