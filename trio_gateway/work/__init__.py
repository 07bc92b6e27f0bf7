"""Units of work and the trio primitives around them: the registry of cancel scopes, the stall
watchdog, the one-deadline drain, and wall-clock time that follows trio's clock."""
