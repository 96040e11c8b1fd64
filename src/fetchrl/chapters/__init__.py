"""The book's chapters as data (:class:`~fetchrl.chapters.base.Chapter`), by id."""

from fetchrl.chapters.base import Chapter
from fetchrl.chapters.ch02 import CHAPTER as CH02
from fetchrl.chapters.ch03 import CHAPTER as CH03
from fetchrl.chapters.ch04 import CHAPTER as CH04

#: Every chapter the ``fetchrl`` command offers, by id ("ch02").
CHAPTERS: dict[str, Chapter] = {c.id: c for c in (CH02, CH03, CH04)}
