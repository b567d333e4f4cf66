"""The DB environment (DBBench): tasks, the MariaDB service, the episode and its scoring, generated tasks."""
