-- A replayed job keeps one row through both of its lives: the row leaves its
-- terminal status ('replaying') until the new outcome, and remembers how
-- often it was replayed and why it failed before.
ALTER TABLE tag_removal_jobs
    ADD COLUMN replay_count        integer     NOT NULL DEFAULT 0,
    ADD COLUMN replayed_at         timestamptz NULL,
    ADD COLUMN previous_error_code integer     NULL,
    ADD COLUMN previous_error_info text        NULL;
