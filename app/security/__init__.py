"""Who is calling: bearer tokens for staff and trusted intake assertions.

``jwt`` verifies signed tokens (a shared HS256 secret or an identity provider's JWK set) with an
explicit algorithm allow-list, so that a token never picks its own verification rules;
``staff`` turns a verified staff token into a ``StaffPrincipal`` and checks its scopes as a
FastAPI dependency.
"""
