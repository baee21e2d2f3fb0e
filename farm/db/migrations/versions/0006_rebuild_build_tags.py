"""rebuild build tags

Job: `build_tag` and `rebuild_reason`. An intentional rebuild of a published version gets a PEP 427
build tag (`-1`, `-2`, ...) in its wheels' file names, so published names stay immutable; the reason
is recorded on the job and in the provenance.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 02:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('build_tag', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('rebuild_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('rebuild_reason')
        batch_op.drop_column('build_tag')
