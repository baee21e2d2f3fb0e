"""api tokens and uploads

`api_token`: tokens live in the database, by their sha256 (farm/tokens.py), with a role, an optional
channel, an expiry and a revocation time; `farm token revoke` takes effect on the next request.
Artifact: `job_id` may be NULL for a wheel uploaded with the legacy upload API (not built here), and
`uploaded_by` names the token that uploaded it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'api_token',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('channel', sa.String(length=64), nullable=True),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=True),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.Column('origin', sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
        sa.UniqueConstraint('sha256'),
    )
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.alter_column('job_id', existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column('uploaded_by', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.drop_column('uploaded_by')
        batch_op.alter_column('job_id', existing_type=sa.Integer(), nullable=False)
    op.drop_table('api_token')
