"""Static checks of the workflow's files: every report item has an existing caption, every rule its log and
benchmark, and every rule script stays a thin entry point."""

import re

from conftest import REPO

RULES = sorted((REPO / "rules").glob("*.smk"))


def test_every_report_item_has_a_caption_that_exists():
    items = 0
    for path in RULES:
        for call in re.findall(r"report\((.*?)\)\s*(?:,|\n)", path.read_text(), flags=re.S):
            items += 1
            caption = re.search(r'caption="([^"]+)"', call)
            assert caption, f"{path.name}: report item without a caption: report({call.strip()})"
            assert (path.parent / caption[1]).resolve().is_file(), f"{path.name}: {caption[1]} does not exist"
    assert items >= 17
    snakefile = (REPO / "Snakefile").read_text()
    assert 'report: "report/workflow.rst"' in snakefile and (REPO / "report" / "workflow.rst").is_file()


def test_rule_scripts_are_thin_entry_points():
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        text = script.read_text()
        body = text.split('"""', 2)[2] if text.startswith('"""') else text  # after the module docstring
        code = [line for line in body.splitlines() if line.strip()]
        assert len(code) <= 15, f"{script.name}: {len(code)} lines; logic belongs in the package"
        assert "def " not in script.read_text(), f"{script.name} defines functions; they belong in the package"
