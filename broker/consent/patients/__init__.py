"""Patient accounts: local log-in, external OpenID Connect log-in, sessions and CSRF."""
