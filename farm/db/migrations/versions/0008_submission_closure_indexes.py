"""submission and job list indexes

The dashboard's submissions page counts the jobs of a page of submissions (`job.submission_id`), and
the job list filtered by platform alone is seek-paged on the id (farm/web/queries.py): each gets an
index that ends in the job id, `(submission_id, id)` and `(platform, id)`, so at a million jobs a
page reads only its own rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 05:00:00.000000
"""

from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

INDEXES = {
    'ix_job_submission_id_id': ['submission_id', 'id'],
    'ix_job_platform_id': ['platform', 'id'],
}


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        for name, columns in INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        for name in INDEXES:
            batch_op.drop_index(name)
