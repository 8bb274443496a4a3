"""Patients, their links to holders, consent records, and the OAuth 2 authorization server."""
