-- Worker processes share each teacher endpoint's limits: every worker renews a lease per
-- endpoint, and holds 1 / (workers with a live lease) of each limit.
CREATE TABLE endpoint_leases (
    endpoint     TEXT        NOT NULL,
    worker       TEXT        NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, worker)
);
