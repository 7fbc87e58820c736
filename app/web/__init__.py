"""The web app: JSON API and HTMX pages on one Litestar app."""
