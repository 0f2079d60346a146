-- Fleet pacing: one row per SDKAppID holds the next free send slot of a
-- single global grid (slots 1 s/limit apart). Workers reserve a few slots at
-- a time; the row lock serialises them, so no two workers get the same slot
-- and no window of 1 s + margin holds more slots than the limit.
CREATE TABLE pacing (
    sdkappid     bigint      PRIMARY KEY,
    next_slot    timestamptz NOT NULL,
    paused_until timestamptz NULL
);
