"""immutable file names

Artifact: `filename_key`, the normalized file name (farm.index.simple.file_key), unique among live
artifacts (`removed_at IS NULL`): a published file name can never be taken by other bytes, nor by a
name that normalizes to it. Existing rows get their key; where live artifacts already share one
(published before names were immutable, when a rebuild replaced the page entry), the newest keeps
it and the older ones get NULL, so the unique index can be built without touching any file.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:02:11.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

LIVE = sa.text("removed_at IS NULL")


def file_key(filename: str) -> str:
    """farm.index.simple.file_key as of this revision (a migration keeps its own copy)."""
    from packaging.utils import (InvalidWheelFilename, canonicalize_name, canonicalize_version,
                                 parse_wheel_filename)
    from packaging.version import InvalidVersion, Version

    try:
        if filename.endswith(".whl"):
            name, version, build, _tags = parse_wheel_filename(filename)
            fields = filename[:-4].split("-")[-3:]
            tags = "-".join(".".join(sorted(f.lower().split("."))) for f in fields)
            tag = f"-{build[0]}{build[1]}" if build else ""
            return f"{name.replace('-', '_')}-{canonicalize_version(version)}{tag}-{tags}.whl"
        for ext in (".tar.gz", ".zip"):
            if filename.endswith(ext):
                raw_name, _, raw_version = filename[: -len(ext)].rpartition("-")
                return f"{canonicalize_name(raw_name).replace('-', '_')}-{canonicalize_version(Version(raw_version))}{ext}"
    except (InvalidWheelFilename, InvalidVersion, ValueError):
        pass
    return filename


def upgrade() -> None:
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.add_column(sa.Column('filename_key', sa.String(length=300), nullable=True))

    conn = op.get_bind()
    artifact = sa.table('artifact', sa.column('id', sa.Integer), sa.column('filename', sa.String),
                        sa.column('filename_key', sa.String), sa.column('removed_at', sa.DateTime))
    rows = conn.execute(sa.select(artifact.c.id, artifact.c.filename, artifact.c.removed_at)
                        .order_by(artifact.c.id.desc())).all()
    live_keys: set[str] = set()
    for id_, filename, removed_at in rows:  # newest first: the newest live artifact keeps a shared key
        key = file_key(filename)
        if removed_at is None:
            if key in live_keys:
                continue
            live_keys.add(key)
        conn.execute(sa.update(artifact).where(artifact.c.id == id_).values(filename_key=key))

    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.create_index('uq_artifact_live_filename_key', ['filename_key'], unique=True,
                              sqlite_where=LIVE, postgresql_where=LIVE)


def downgrade() -> None:
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.drop_index('uq_artifact_live_filename_key', sqlite_where=LIVE, postgresql_where=LIVE)
        batch_op.drop_column('filename_key')
