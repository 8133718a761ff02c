-- Control plane, scheduler: whether a running fan-out stopped cleanly (shutdown, lost leadership
-- or pause after every published job was acknowledged and committed). A clean stop leaves no job
-- in doubt, so resuming it any time later cannot store a job twice; a crash can leave up to a few
-- thousand jobs published after the last committed cursor, which only the stream's duplicate
-- window drops. Set on a clean stop, cleared by the next progress and when a fan-out (re)starts.
ALTER TABLE fleet.schedule_runs ADD COLUMN IF NOT EXISTS clean_stop boolean NOT NULL DEFAULT false;
