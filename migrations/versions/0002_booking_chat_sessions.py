"""booking chat sessions

A booked session held as a chat through the bot (``booking_chat``), and the name residents
see for a counselor in it (``counselor.display_name``). Only additions: processes of the
previous version keep working while the upgrade runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('booking_chat',
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('close_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_by', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.ForeignKeyConstraint(['booking_id'], ['booking.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('booking_id')
    )
    with op.batch_alter_table('booking_chat', schema=None) as batch_op:
        batch_op.create_index('ix_booking_chat_due', ['status', 'close_at'], unique=False)

    with op.batch_alter_table('counselor', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'display_name',
                sqlmodel.sql.sqltypes.AutoString(length=32),
                nullable=False,
                server_default='',
            )
        )


def downgrade() -> None:
    with op.batch_alter_table('counselor', schema=None) as batch_op:
        batch_op.drop_column('display_name')

    with op.batch_alter_table('booking_chat', schema=None) as batch_op:
        batch_op.drop_index('ix_booking_chat_due')

    op.drop_table('booking_chat')
