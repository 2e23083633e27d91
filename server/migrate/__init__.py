"""Migration tools: bring an existing xiaozhi deployment's data into PostgreSQL (S23–S26).

* ``mysql-to-pg``: the manager tables (users, agents, devices, configs, global_roles) from MySQL/MariaDB;
* ``redis-to-pg``: the conversation history the Go server really keeps in Redis (``<prefix>:llm:<device>``
  sorted sets and ``<prefix>:llm:system:<device>`` prompts), plus the list layout the design assumed;
* ``verify``: source and target counts per table and per device.

Both migrations only read the source, can be re-run (ids are kept or derived deterministically), stream
in bounded batches, and list every record they could not take in a report file.
"""
