"""mkdocs hook: README.md is the site's front page.

README is written for the repository, where the guide's pages are under `docs/`; on the site they are beside the
front page, so its links into `docs/` lose that prefix. docs/index.md only holds the front page's place in the site.
"""

from __future__ import annotations

import re
from pathlib import Path


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    readme = Path(config.config_file_path).parent / "README.md"
    return re.sub(r"\]\(docs/", "](", readme.read_text(encoding="utf-8"))
