# ruff: noqa: E501  (rendered by Alembic autogenerate)
"""Baseline: the hub's tables as the capability stores declared them when the store moved onto SQLAlchemy Core
and Alembic (frozen here, rendered by Alembic's autogenerate from that metadata), then each store's dialect
extras (FTS5 tables on SQLite, pg_trgm indexes on PostgreSQL, the append-only audit triggers).

A later schema change is a NEW revision (and the matching change in the store's Table); this file stays as
it is, so a database made today and one made from an older release reach the same head the same way.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = [
    'channel_scenes',
    'codes_departments',
    'codes_duties',
    'codes_issued',
    'codes_keys',
    'codes_lists',
    'codes_revoked_identities',
    'codes_rules',
    'codes_scans',
    'codes_urls',
    'codes_verify_stats',
    'codes_webhooks',
    'device_commands',
    'device_sites',
    'devices',
    'dialer_cdrs',
    'dialer_dnc',
    'dialer_tasks',
    'dialer_templates',
    'events',
    'iam_apikeys',
    'iam_audit',
    'iam_bindings',
    'iam_login_failures',
    'iam_makers',
    'iam_meta',
    'iam_orgs',
    'iam_roles',
    'iam_sessions',
    'iam_users',
    'ingest_rejects',
    'registry_applications',
    'registry_entities',
    'registry_feed',
    'registry_rejects',
    'registry_serials',
    'scan_batches',
    'scans',
    'video_alerts',
    'video_cameras',
    'video_case_log',
    'video_cases',
    'video_cursor',
    'video_feedback',
    'video_routes',
    'video_sites',
    'channel_grants',
    'codes_applications',
    'dialer_contacts',
    'registry_aliases',
    'registry_links',
    'video_case_events',
    'codes_appkeys',
]


def upgrade() -> None:
    op.create_table('channel_scenes',
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('service_name', sa.Text(), nullable=False),
    sa.Column('service_addr', sa.Text(), nullable=False),
    sa.Column('service_port', sa.Integer(), nullable=False),
    sa.Column('ttl_s', sa.Integer(), nullable=False),
    sa.Column('gateway_public_key', sa.Text(), nullable=False),
    sa.Column('endpoint', sa.Text(), nullable=False),
    sa.Column('terminals', sa.Text(), server_default='[]', nullable=False),
    sa.Column('enabled', sa.Integer(), server_default='1', nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('app_id', name=op.f('pk_channel_scenes'))
    )
    op.create_table('codes_departments',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('webhook_url', sa.Text(), nullable=True),
    sa.Column('webhook_secret', sa.Text(), nullable=True),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_codes_departments'))
    )
    op.create_table('codes_duties',
    sa.Column('dept_id', sa.Text(), nullable=False),
    sa.Column('scene_type', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.PrimaryKeyConstraint('dept_id', 'scene_type', name=op.f('pk_codes_duties')),
    sqlite_with_rowid=False
    )
    op.create_table('codes_issued',
    sa.Column('serial', sa.Text(), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dept_id', sa.Text(), nullable=False),
    sa.Column('code_system', sa.Text(), nullable=False),
    sa.Column('identity_id', sa.Text(), nullable=False),
    sa.Column('kid', sa.Text(), nullable=False),
    sa.Column('issued_at', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('expires_at', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='active', nullable=False),
    sa.Column('revoked_at', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('scans', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_scan_at', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('serial', name=op.f('pk_codes_issued')),
    sqlite_with_rowid=False
    )
    op.create_index('codes_issued_app', 'codes_issued', ['app_id', 'issued_at'], unique=False)
    op.create_index('codes_issued_identity', 'codes_issued', ['identity_id'], unique=False)
    op.create_table('codes_keys',
    sa.Column('kid', sa.Text(), nullable=False),
    sa.Column('dept_id', sa.Text(), nullable=False),
    sa.Column('alg', sa.Text(), nullable=False),
    sa.Column('pub', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('not_before', sa.Float(), nullable=False),
    sa.Column('not_after', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('revoked_at', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_codes_keys'))
    )
    op.create_index('codes_keys_dept', 'codes_keys', ['dept_id', 'status'], unique=False)
    op.create_table('codes_lists',
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('published_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'version', name=op.f('pk_codes_lists')),
    sqlite_with_rowid=False
    )
    op.create_table('codes_revoked_identities',
    sa.Column('identity_id', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('revoked_by', sa.Text(), nullable=False),
    sa.Column('revoked_at', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.PrimaryKeyConstraint('identity_id', name=op.f('pk_codes_revoked_identities')),
    sqlite_with_rowid=False
    )
    op.create_table('codes_rules',
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_codes_rules')),
    sqlite_with_rowid=False
    )
    op.create_table('codes_scans',
    sa.Column('scan_id', sa.Text(), nullable=False),
    sa.Column('serial', sa.Text(), nullable=True),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('dept_id', sa.Text(), nullable=True),
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('verdict', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('ts', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.PrimaryKeyConstraint('scan_id', name=op.f('pk_codes_scans')),
    sqlite_with_rowid=False
    )
    op.create_index('codes_scans_app_ts', 'codes_scans', ['app_id', 'ts'], unique=False)
    op.create_index('codes_scans_serial', 'codes_scans', ['serial'], unique=False)
    op.create_table('codes_urls',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dept_id', sa.Text(), nullable=True),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('filed_by', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_codes_urls')),
    sa.UniqueConstraint('url', name=op.f('uq_codes_urls_url'))
    )
    op.create_table('codes_verify_stats',
    sa.Column('day', sa.Text(), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('verdict', sa.Text(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'app_id', 'verdict', name=op.f('pk_codes_verify_stats')),
    sqlite_with_rowid=False
    )
    op.create_table('codes_webhooks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dept_id', sa.Text(), nullable=False),
    sa.Column('event', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_at', sa.Float(), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_codes_webhooks'))
    )
    op.create_index('codes_webhooks_due', 'codes_webhooks', ['status', 'next_at'], unique=False)
    op.create_table('device_commands',
    sa.Column('cmd_id', sa.Text(), nullable=False),
    sa.Column('device_id', sa.Text(), nullable=True),
    sa.Column('action', sa.Text(), nullable=True),
    sa.Column('args', sa.Text(), nullable=True),
    sa.Column('sent_at', sa.Text(), nullable=True),
    sa.Column('acked_at', sa.Text(), nullable=True),
    sa.Column('ok', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('cmd_id', name=op.f('pk_device_commands'))
    )
    op.create_table('device_sites',
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('org_path', sa.Text(), nullable=False),
    sa.Column('claimed_by', sa.Text(), nullable=False),
    sa.Column('claimed_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('site', name=op.f('pk_device_sites'))
    )
    op.create_table('devices',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('org_path', sa.Text(), nullable=False),
    sa.Column('username', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='unknown', nullable=True),
    sa.Column('status_at', sa.Text(), nullable=True),
    sa.Column('last_hb_at', sa.Text(), nullable=True),
    sa.Column('hb', sa.Text(), nullable=True),
    sa.Column('queue_depth', sa.Integer(), server_default='0', nullable=True),
    sa.Column('queue_dropped', sa.Integer(), server_default='0', nullable=True),
    sa.Column('revoked', sa.Integer(), server_default='0', nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_devices'))
    )
    op.create_index('idx_devices_site', 'devices', ['site'], unique=False)
    op.create_table('dialer_cdrs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('engine', sa.Text(), nullable=True),
    sa.Column('started_at', sa.Text(), nullable=False),
    sa.Column('answered_at', sa.Text(), nullable=True),
    sa.Column('ended_at', sa.Text(), nullable=True),
    sa.Column('sip_status', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.Text(), nullable=False),
    sa.Column('answers', sa.Text(), nullable=True),
    sa.Column('asr_text', sa.Text(), nullable=True),
    sa.Column('transcript', sa.Text(), nullable=True),
    sa.Column('recording', sa.Text(), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dialer_cdrs'))
    )
    op.create_index('dialer_cdrs_task', 'dialer_cdrs', ['task_id', 'contact_id'], unique=False)
    op.create_table('dialer_dnc',
    sa.Column('phone_idx', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('phone_masked', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('added_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('phone_idx', 'org', name=op.f('pk_dialer_dnc'))
    )
    op.create_table('dialer_tasks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('template_key', sa.Text(), nullable=False),
    sa.Column('template_version', sa.Integer(), nullable=False),
    sa.Column('template', sa.Text(), nullable=False),
    sa.Column('schedule', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('webhook_url', sa.Text(), nullable=True),
    sa.Column('webhook_secret', sa.Text(), nullable=True),
    sa.Column('created_by', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('started_at', sa.Text(), nullable=True),
    sa.Column('finished_at', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dialer_tasks'))
    )
    op.create_table('dialer_templates',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('language', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('based_on', sa.Text(), nullable=True),
    sa.Column('builtin', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_by', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dialer_templates')),
    sa.UniqueConstraint('key', 'version', name=op.f('uq_dialer_templates_key_version'))
    )
    op.create_table('events',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('ts', sa.Text(), nullable=False),
    sa.Column('received_at', sa.Text(), nullable=False),
    sa.Column('phase', sa.Text(), nullable=True),
    sa.Column('incident_id', sa.Text(), nullable=True),
    sa.Column('camera', sa.Text(), nullable=True),
    sa.Column('zone', sa.Text(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('count', sa.Integer(), nullable=True),
    sa.Column('payload', sa.Text(), nullable=True),
    sa.Column('snapshot', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_events_event_id'))
    )
    op.create_index('idx_events_kind_ts', 'events', ['kind', 'ts'], unique=False)
    op.create_index('idx_events_site_device_ts', 'events', ['site', 'device', 'ts'], unique=False)
    op.create_table('iam_apikeys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('key_hash', sa.Text(), nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.Column('last_used_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_iam_apikeys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_iam_apikeys_key_hash'))
    )
    op.create_table('iam_audit',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('ts', sa.Text(), nullable=False),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('target', sa.Text(), nullable=True),
    sa.Column('org', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('alg', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.Text(), nullable=False),
    sa.Column('hash', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_iam_audit'))
    )
    op.create_index('iam_audit_org', 'iam_audit', ['org'], unique=False)
    op.create_table('iam_bindings',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('apikey_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('role', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('granted_by', sa.Text(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_iam_bindings'))
    )
    op.create_index('iam_bindings_key', 'iam_bindings', ['apikey_id'], unique=False)
    op.create_index('iam_bindings_parent', 'iam_bindings', ['parent_id'], unique=False)
    op.create_index('iam_bindings_user', 'iam_bindings', ['user_id'], unique=False)
    op.create_table('iam_login_failures',
    sa.Column('username', sa.Text(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('first_failed_at', sa.Float(), nullable=False),
    sa.Column('locked_until', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('username', name=op.f('pk_iam_login_failures'))
    )
    op.create_table('iam_makers',
    sa.Column('object', sa.Text(), nullable=False),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('act', sa.Text(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('object', 'actor', 'act', name=op.f('pk_iam_makers'))
    )
    op.create_table('iam_meta',
    sa.Column('key', sa.Text(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_iam_meta'))
    )
    op.create_table('iam_orgs',
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('parent', sa.Text(), nullable=True),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('path', name=op.f('pk_iam_orgs'))
    )
    op.create_index('iam_orgs_parent', 'iam_orgs', ['parent'], unique=False)
    op.create_table('iam_roles',
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), server_default='', nullable=False),
    sa.Column('patterns', sa.Text(), nullable=False),
    sa.Column('builtin', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_by', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('scope', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_iam_roles'))
    )
    op.create_table('iam_sessions',
    sa.Column('token_hash', sa.Text(), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('must_change', sa.Integer(), server_default='0', nullable=False),
    sa.Column('client', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_iam_sessions'))
    )
    op.create_index('iam_sessions_user', 'iam_sessions', ['user_id'], unique=False)
    op.create_table('iam_users',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('username', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('pw_hash', sa.Text(), nullable=False),
    sa.Column('must_change', sa.Integer(), server_default='1', nullable=False),
    sa.Column('failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('first_failed_at', sa.Float(), nullable=True),
    sa.Column('locked_until', sa.Float(), nullable=True),
    sa.Column('disabled', sa.Integer(), server_default='0', nullable=False),
    sa.Column('phone_enc', sa.Text(), nullable=True),
    sa.Column('phone_bi', sa.Text(), nullable=True),
    sa.Column('id_card_enc', sa.Text(), nullable=True),
    sa.Column('id_card_bi', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_iam_users')),
    sa.UniqueConstraint('username', name=op.f('uq_iam_users_username'))
    )
    op.create_index('iam_users_id_card_bi', 'iam_users', ['id_card_bi'], unique=False)
    op.create_index('iam_users_phone_bi', 'iam_users', ['phone_bi'], unique=False)
    op.create_table('ingest_rejects',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.Text(), nullable=True),
    sa.Column('topic', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_rejects'))
    )
    op.create_index('idx_ingest_rejects_reason', 'ingest_rejects', ['reason'], unique=False)
    op.create_table('registry_applications',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('applicant', sa.Text(), nullable=False),
    sa.Column('applicant_org', sa.Text(), nullable=False),
    sa.Column('owner_org', sa.Text(), nullable=False),
    sa.Column('purpose', sa.Text(), nullable=False),
    sa.Column('fields', sa.Text(), nullable=False),
    sa.Column('valid_from', sa.Text(), nullable=False),
    sa.Column('valid_to', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('decided_by', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registry_applications'))
    )
    op.create_index('registry_applications_status', 'registry_applications', ['status', 'applicant_org'], unique=False)
    op.create_table('registry_entities',
    sa.Column('rid', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('type', sa.Text(), nullable=False),
    sa.Column('region', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('address', sa.Text(), nullable=True),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('ext_kind', sa.Text(), nullable=True),
    sa.Column('ext_bi', sa.Text(), nullable=True),
    sa.Column('ext_enc', sa.Text(), nullable=True),
    sa.Column('ext_masked', sa.Text(), nullable=True),
    sa.Column('phone_enc', sa.Text(), nullable=True),
    sa.Column('grid', sa.Text(), nullable=True),
    sa.Column('valid_from', sa.Text(), nullable=True),
    sa.Column('valid_to', sa.Text(), nullable=True),
    sa.Column('attrs', sa.Text(), server_default='{}', nullable=False),
    sa.Column('status', sa.Text(), server_default='active', nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('rid', name=op.f('pk_registry_entities')),
    sa.UniqueConstraint('ext_bi', name=op.f('uq_registry_entities_ext_bi')),
    sa.UniqueConstraint('id', name=op.f('uq_registry_entities_id'))
    )
    op.create_index('registry_entities_grid', 'registry_entities', ['grid'], unique=False, sqlite_where=sa.text('grid IS NOT NULL'), postgresql_where=sa.text('grid IS NOT NULL'))
    op.create_index('registry_entities_org', 'registry_entities', ['org'], unique=False)
    op.create_index('registry_entities_type_region', 'registry_entities', ['type', 'region'], unique=False)
    op.create_table('registry_feed',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('ts', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('entity_id', sa.Text(), nullable=True),
    sa.Column('org', sa.Text(), nullable=True),
    sa.Column('data', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_registry_feed')),
    sqlite_autoincrement=True
    )
    op.create_table('registry_rejects',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('ts', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registry_rejects'))
    )
    op.create_table('registry_serials',
    sa.Column('type_code', sa.Text(), nullable=False),
    sa.Column('region', sa.Text(), nullable=False),
    sa.Column('next', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('type_code', 'region', name=op.f('pk_registry_serials')),
    sqlite_with_rowid=False
    )
    op.create_table('scan_batches',
    sa.Column('batch_id', sa.Text(), nullable=False),
    sa.Column('site', sa.Text(), nullable=True),
    sa.Column('device', sa.Text(), nullable=True),
    sa.Column('received_at', sa.Text(), nullable=True),
    sa.Column('n', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_scan_batches'))
    )
    op.create_table('scans',
    sa.Column('scan_id', sa.Text(), nullable=False),
    sa.Column('batch_id', sa.Text(), nullable=True),
    sa.Column('site', sa.Text(), nullable=True),
    sa.Column('device', sa.Text(), nullable=True),
    sa.Column('serial', sa.Text(), nullable=True),
    sa.Column('code_system', sa.Text(), nullable=True),
    sa.Column('dept', sa.Text(), nullable=True),
    sa.Column('verdict', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('ts', sa.Text(), nullable=True),
    sa.Column('location', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('scan_id', name=op.f('pk_scans'))
    )
    op.create_index('idx_scans_dept_ts', 'scans', ['dept', 'ts'], unique=False)
    op.create_index('idx_scans_serial', 'scans', ['serial'], unique=False)
    op.create_table('video_alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('sent_at', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_video_alerts'))
    )
    op.create_index('video_alerts_case', 'video_alerts', ['case_id'], unique=False)
    op.create_table('video_cameras',
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('camera', sa.Text(), nullable=False),
    sa.Column('lat', sa.Float(), nullable=True),
    sa.Column('lon', sa.Float(), nullable=True),
    sa.Column('neighbours', sa.Text(), server_default='[]', nullable=False),
    sa.Column('updated_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('site', 'device', 'camera', name=op.f('pk_video_cameras'))
    )
    op.create_table('video_case_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('ts', sa.Text(), nullable=False),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('action', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), server_default='{}', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_video_case_log'))
    )
    op.create_index('video_case_log_case', 'video_case_log', ['case_id', 'id'], unique=False)
    op.create_table('video_cases',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('camera', sa.Text(), nullable=True),
    sa.Column('zone', sa.Text(), nullable=True),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('verdict', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('score', sa.Float(), server_default='0', nullable=False),
    sa.Column('peak_count', sa.Integer(), nullable=True),
    sa.Column('first_ts', sa.Text(), nullable=False),
    sa.Column('last_ts', sa.Text(), nullable=False),
    sa.Column('live', sa.Integer(), server_default='1', nullable=False),
    sa.Column('event_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('cameras', sa.Text(), server_default='[]', nullable=False),
    sa.Column('lat', sa.Float(), nullable=True),
    sa.Column('lon', sa.Float(), nullable=True),
    sa.Column('snapshot', sa.LargeBinary(), nullable=True),
    sa.Column('department', sa.Text(), nullable=True),
    sa.Column('route_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('due_at', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.Text(), nullable=False),
    sa.Column('reviewed_at', sa.Text(), nullable=True),
    sa.Column('dispatched_at', sa.Text(), nullable=True),
    sa.Column('acknowledged_at', sa.Text(), nullable=True),
    sa.Column('resolved_at', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_video_cases'))
    )
    op.create_index('video_cases_open', 'video_cases', ['site', 'kind', 'status', 'last_ts'], unique=False)
    op.create_index('video_cases_org', 'video_cases', ['org', 'status'], unique=False)
    op.create_table('video_cursor',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_video_cursor'))
    )
    op.create_table('video_feedback',
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('camera', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('zone', sa.Text(), nullable=False),
    sa.Column('confirmed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('false_positive', sa.Integer(), server_default='0', nullable=False),
    sa.Column('reasons', sa.Text(), server_default='[]', nullable=False),
    sa.Column('updated_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('site', 'device', 'camera', 'kind', 'zone', name=op.f('pk_video_feedback'))
    )
    op.create_table('video_routes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('org_prefix', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('department', sa.Text(), nullable=False),
    sa.Column('webhook_url', sa.Text(), nullable=True),
    sa.Column('webhook_secret', sa.Text(), nullable=True),
    sa.Column('mqtt', sa.Integer(), server_default='1', nullable=False),
    sa.Column('ack_sla_min', sa.Float(), nullable=False),
    sa.Column('resolve_sla_min', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_video_routes'))
    )
    op.create_table('video_sites',
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('org_path', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('site', name=op.f('pk_video_sites'))
    )
    op.create_table('channel_grants',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('serial', sa.Text(), nullable=False),
    sa.Column('identity_id', sa.Text(), nullable=False),
    sa.Column('via', sa.Text(), nullable=False),
    sa.Column('peer_public_key', sa.Text(), nullable=False),
    sa.Column('peer_address', sa.Text(), nullable=False),
    sa.Column('allowed_ips', sa.Text(), nullable=False),
    sa.Column('issued_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('status', sa.Text(), server_default='active', nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('end_reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['channel_scenes.app_id'], name=op.f('fk_channel_grants_app_id_channel_scenes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_channel_grants')),
    sqlite_with_rowid=False
    )
    op.create_index('channel_grants_active', 'channel_grants', ['status', 'expires_at'], unique=False)
    op.create_index('channel_grants_addr', 'channel_grants', ['peer_address'], unique=True, sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
    op.create_index('channel_grants_serial', 'channel_grants', ['serial'], unique=False)
    op.create_table('codes_applications',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dept_id', sa.Text(), nullable=False),
    sa.Column('applicant', sa.Text(), nullable=False),
    sa.Column('scene_name', sa.Text(), nullable=False),
    sa.Column('scene_type', sa.Text(), nullable=False),
    sa.Column('code_type', sa.Text(), nullable=False),
    sa.Column('entity_type', sa.Text(), nullable=False),
    sa.Column('purpose', sa.Text(), nullable=False),
    sa.Column('share_commitment', sa.Integer(), nullable=False),
    sa.Column('validity', sa.Text(), nullable=False),
    sa.Column('single_use', sa.Integer(), nullable=False),
    sa.Column('status', sa.Text(), server_default='pending', nullable=False),
    sa.Column('checks', sa.Text(), nullable=True),
    sa.Column('code_system', sa.Text(), nullable=True),
    sa.Column('auth_id', sa.Text(), nullable=True),
    sa.Column('decided_by', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['dept_id'], ['codes_departments.id'], name=op.f('fk_codes_applications_dept_id_codes_departments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_codes_applications')),
    sa.UniqueConstraint('auth_id', name=op.f('uq_codes_applications_auth_id'))
    )
    op.create_index('codes_applications_dept', 'codes_applications', ['dept_id', 'status'], unique=False)
    op.create_index('codes_applications_dup', 'codes_applications', ['entity_type', 'scene_type', 'status'], unique=False)
    op.create_table('dialer_contacts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('row_no', sa.Integer(), nullable=True),
    sa.Column('phone_enc', sa.Text(), nullable=False),
    sa.Column('phone_idx', sa.Text(), nullable=False),
    sa.Column('phone_masked', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('vars', sa.Text(), server_default='{}', nullable=False),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_at', sa.Text(), nullable=True),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('answers', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.Text(), nullable=False),
    sa.Column('claimed_by', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['task_id'], ['dialer_tasks.id'], name=op.f('fk_dialer_contacts_task_id_dialer_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dialer_contacts'))
    )
    op.create_index('dialer_contacts_due', 'dialer_contacts', ['task_id', 'status', 'next_at'], unique=False)
    op.create_index('dialer_contacts_phone', 'dialer_contacts', ['task_id', 'phone_idx'], unique=True)
    op.create_table('registry_aliases',
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('local_id', sa.Text(), nullable=False),
    sa.Column('base_id', sa.Text(), nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['base_id'], ['registry_entities.id'], name=op.f('fk_registry_aliases_base_id_registry_entities')),
    sa.PrimaryKeyConstraint('org', 'local_id', name=op.f('pk_registry_aliases')),
    sqlite_with_rowid=False
    )
    op.create_index('registry_aliases_base', 'registry_aliases', ['base_id'], unique=False)
    op.create_table('registry_links',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('src', sa.Text(), nullable=False),
    sa.Column('rel', sa.Text(), nullable=False),
    sa.Column('dst', sa.Text(), nullable=False),
    sa.Column('category', sa.Text(), nullable=False),
    sa.Column('org', sa.Text(), nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('src_rid', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dst_rid', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['dst'], ['registry_entities.id'], name=op.f('fk_registry_links_dst_registry_entities')),
    sa.ForeignKeyConstraint(['src'], ['registry_entities.id'], name=op.f('fk_registry_links_src_registry_entities')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registry_links')),
    sa.UniqueConstraint('src_rid', 'rel', 'dst_rid', name=op.f('uq_registry_links_src_rid_rel_dst_rid'))
    )
    op.create_index('registry_links_down', 'registry_links', ['dst_rid', 'category', 'src_rid'], unique=False)
    op.create_table('video_case_events',
    sa.Column('event_id', sa.Text(), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('site', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('incident_id', sa.Text(), nullable=True),
    sa.Column('camera', sa.Text(), nullable=True),
    sa.Column('phase', sa.Text(), nullable=False),
    sa.Column('ts', sa.Text(), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('count', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['video_cases.id'], name=op.f('fk_video_case_events_case_id_video_cases')),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_video_case_events'))
    )
    op.create_index('video_case_events_case', 'video_case_events', ['case_id', 'ts'], unique=False)
    op.create_index('video_case_events_incident', 'video_case_events', ['site', 'device', 'incident_id'], unique=False)
    op.create_table('codes_appkeys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('app_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('key_hash', sa.Text(), nullable=False),
    sa.Column('created_by', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Text(), nullable=False),
    sa.Column('revoked_at', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['codes_applications.id'], name=op.f('fk_codes_appkeys_app_id_codes_applications')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_codes_appkeys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_codes_appkeys_key_hash'))
    )
    from central.store.migrations import create_extras

    create_extras(context.config.attributes["db"], set(TABLES))


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded: restore a backup instead")
