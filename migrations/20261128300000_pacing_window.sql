-- Fleet pacing keeps the last `limit` slots of each app (µs since the epoch,
-- database clock) so a reservation can apply the sliding-window rule
-- itself, and remembers which reserver holds the one burst an idle
-- schedule allows (see src/limit/schedule.rs). next_slot stays the grid's
-- cursor, which workers of the previous version reserve from.
ALTER TABLE pacing
    ADD COLUMN recent      bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN burst_owner uuid     NULL;
