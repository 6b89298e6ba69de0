"""Rewrite README's settings table from spawner.settings.SETTINGS (make readme)."""

import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from spawner.settings import markdown_table  # noqa: E402

readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
pattern = re.compile(r"(<!-- settings:start \(make readme\) -->\n).*?(\n<!-- settings:end -->)", re.S)
readme.write_text(pattern.sub(lambda m: m.group(1) + markdown_table() + m.group(2), text))
