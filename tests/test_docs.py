"""The README and docs/ as a newcomer meets them: every relative link resolves, the pages stay
short, and the README's two commands are the ones CI and the default run use."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
    assert len(PAGES) >= 8  # the README and its docs pages


def test_the_readme_and_each_docs_page_stay_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    for page in PAGES[1:]:
        assert len(page.read_text().splitlines()) <= 300, page.name


def two_commands() -> list[str]:
    """The commands in the README's "The two commands" block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_the_readmes_two_commands_are_what_ci_and_the_default_run_use():
    import bootstrap
    from cai.run.cli import parse_args

    main_job, tests = two_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci[-1] == tests == "python -m pytest -q"  # CI runs exactly the test command, last
    setup, run = main_job.split(" && ")
    assert setup == "bash install.sh" and setup in ci
    assert run == "python bootstrap.py --until stage6"
    args = parse_args(run.split()[2:], bootstrap.__doc__)
    assert args.until == "stage6" and args.profile is None and args.run is None  # the defaults
