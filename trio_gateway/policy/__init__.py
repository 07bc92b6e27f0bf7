"""Pure rules and records: no I/O, no trio. The bottom of the house."""
