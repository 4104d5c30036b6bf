-- Gateway-wide settings switched through the management API (SPEC §5):
-- usageDetails and auditLog. Absent rows mean the default (on).
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
