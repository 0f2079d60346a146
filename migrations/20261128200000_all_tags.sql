-- Remove-all-tags jobs (CONTRACT §8): their rows have tags = '{}' and
-- all_tags = true. A constant default makes this a catalogue change only
-- (PostgreSQL 11+), however large the table.
ALTER TABLE tag_removal_jobs ADD COLUMN all_tags boolean NOT NULL DEFAULT false;
