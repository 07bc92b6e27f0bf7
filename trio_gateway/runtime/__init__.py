"""The running gateway: generations, work units, stalls, the drain, agents, cron."""
