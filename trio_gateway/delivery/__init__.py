"""Getting entries to their channels (SPEC 7), one module per job:

- `outbox`: `Outbox`, what agents, cron and the edges call: route, validate, enqueue durably;
- `scheduler`: pure decisions — what is due when, paused accounts, retry or give up, the repair plan;
- `worker`: `DeliveryWorker`, claim, send and settle each entry in its own cancel scope;
- `repair`: `delivery repair`, applying the repair plan to the pending queue;
- `service`: `QueueDelivery`, one generation's delivery side as the runtime sees it.

The entry itself (`DeliveryEntry`) is policy (`policy.entry`); the queue on disk is storage
(`storage.queue`); cluster mode's queue and worker are `cluster.pg_delivery`.
"""
