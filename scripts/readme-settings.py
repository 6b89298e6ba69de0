"""Rewrite the settings table in docs/admin.md from spawner.settings.SETTINGS (make readme).

The table lives between the `settings:start` / `settings:end` markers;
tests/unit/test_settings.py fails while it is stale.
"""

import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root))
from spawner.settings import markdown_table  # noqa: E402

page = root / "docs" / "admin.md"
text = page.read_text()
pattern = re.compile(r"(<!-- settings:start \(make readme\) -->\n).*?(\n<!-- settings:end -->)", re.S)
new, count = pattern.subn(lambda m: m.group(1) + markdown_table() + m.group(2), text)
if count != 1:
    sys.exit(f"{page}: expected one settings:start / settings:end marker pair, found {count}")
page.write_text(new)
print(f"wrote the settings table to {page.relative_to(root)}")
