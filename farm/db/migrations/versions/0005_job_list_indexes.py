"""job list indexes

The dashboard's job lists are seek-paged on the job id, newest first, filtered by state, platform or
project (farm/web/queries.py), and `/metrics` counts jobs by state and platform (farm/web/metrics.py).
Each filter gets an index that ends in the id, so a page reads only its rows at any depth and the
counts are index-only: `(state, id)`, `(platform, state, id)`, `(source_id, id)`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 09:00:00.000000
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

INDEXES = {
    'ix_job_state_id': ['state', 'id'],
    'ix_job_platform_state_id': ['platform', 'state', 'id'],
    'ix_job_source_id_id': ['source_id', 'id'],
}


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        for name, columns in INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        for name in INDEXES:
            batch_op.drop_index(name)
