"""Alembic's environment for the catalog: run on a connection that catalog/schema.py opened.

scanet-node configures Alembic in code (no alembic.ini): ``schema.py`` opens the connection,
begins the transaction and takes the lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL), then hands the connection over in ``config.attributes["connection"]``. Alembic sees
a transaction already begun and leaves committing to the caller, so a whole upgrade (stamp,
every revision, the final check) commits or rolls back as one.
"""

from __future__ import annotations

from alembic import context

from scanet_node.catalog.models import Base


def run_migrations_online() -> None:
    """Run the revisions on the connection handed over by catalog/schema.py."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the catalog migrations run through scanet_node.catalog.schema "
            "(scanet-node db upgrade), not the alembic command line"
        )
    # DDL is transactional here on both backends: on SQLite too, since the engine issues BEGIN
    # itself (store.py) rather than leaving it to pysqlite.
    context.configure(connection=connection, target_metadata=Base.metadata, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
