-- The stream a consumer position counts in, by its creation time: a stream deleted and made
-- again numbers its messages from 1, and a position in the old one means nothing there.
ALTER TABLE consumer_positions ADD COLUMN stream_created timestamptz;
