"""The search page: static files written for this project, served by the query app."""
