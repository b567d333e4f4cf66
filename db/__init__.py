"""The results store: SQLAlchemy 2 typed ORM on SQLite (WAL, foreign keys on), migrated by Alembic."""

from cycleqd.db.store import DuplicateEpisodeError, EpisodeRecord, Store, open_store

__all__ = ["DuplicateEpisodeError", "EpisodeRecord", "Store", "open_store"]
