"""What the spider hands the pipeline: one page of rows of a job, and the cursors around it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(repr=False)
class PageItem:
    """One API page of one (site, type) job and the cursors around it."""

    job_id: int
    token: int  # the lease it was fetched under: a page of a job claimed since is not stored
    subdomain: str
    document_type: str
    cursor_in: str | None
    cursor_out: str | None
    rows: list[Any] = field(default_factory=list)
    url: str = ""
    unicode_checked: bool = True  # orjson read the page, so its text is valid Unicode

    @property
    def final(self) -> bool:
        """The source has no page after this one."""
        return self.cursor_out is None

    def __repr__(self) -> str:
        # A page holds up to 1000 rows of text: never dump them into the log.
        return (
            f"<PageItem job={self.job_id} {self.subdomain}/{self.document_type}"
            f" rows={len(self.rows)} final={self.final}>"
        )
