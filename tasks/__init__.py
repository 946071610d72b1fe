"""The Prefect tasks a run is made of, and the retry table (``recovery``) they are built from."""
