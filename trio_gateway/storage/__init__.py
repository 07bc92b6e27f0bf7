"""Where state lives on one machine: atomic files, the queue, sessions, home, lock."""
