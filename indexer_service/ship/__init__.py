"""The PostgreSQL sink: ships the index's record tables to a shared PostgreSQL, per machine."""
