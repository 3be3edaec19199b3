"""Users and access: who is calling (`Caller`), how they prove it (JWT access tokens from a login session, or
long-lived API tokens), what they may reach (`access`), rate limits and the audit log."""
