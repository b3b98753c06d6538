"""What the spider hands the pipeline: a page of rows, or the end of a job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(repr=False)
class PageItem:
    """One API page of one (site, type) job and the cursors around it."""

    job_id: int
    subdomain: str
    document_type: str
    cursor_in: str | None
    cursor_out: str | None
    rows: list[Any] = field(default_factory=list)
    url: str = ""

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


@dataclass
class JobFailed:
    """A job that cannot go on: why, and whether it used up its retries."""

    job_id: int
    subdomain: str
    document_type: str
    error: str
    retries_exhausted: bool = False


@dataclass
class CountItem:
    """The source's own count of one (site, type), or None when it could not be taken."""

    job_id: int
    subdomain: str
    document_type: str
    expected: int | None
    note: str = ""


@dataclass(repr=False)
class RepairItem:
    """Repair of one (site, type): rows fetched by id, and ids the source no longer has."""

    job_id: int
    subdomain: str
    document_type: str
    rows: list[Any] = field(default_factory=list)
    delete_ids: list[str] = field(default_factory=list)
    url: str = ""

    def __repr__(self) -> str:
        return (
            f"<RepairItem job={self.job_id} {self.subdomain}/{self.document_type}"
            f" rows={len(self.rows)} delete={len(self.delete_ids)}>"
        )
