-- Every chat message, once: the key is the room's (epoch, offset), which
-- the server's publish script hands out exactly once.
CREATE TABLE messages (
    room        text        NOT NULL,
    -- The room's offset epoch (12 hex digits, see server/src/store/lua.rs):
    -- offsets are unique within one epoch.
    epoch       text        NOT NULL,
    "offset"    bigint      NOT NULL,
    nick        text        NOT NULL,
    text        text        NOT NULL,
    -- The instance that accepted the message.
    app_id      text        NOT NULL,
    -- Server time, ms since the Unix epoch.
    ts          bigint      NOT NULL,
    -- The sender's connection id and token subject, when the frame carries them.
    sender      text,
    sub         text,
    -- The client's own message id, echoed to clients.
    msg_id      text,
    action      boolean     NOT NULL DEFAULT false,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, epoch, "offset")
);

-- Paging back through a room:
--   WHERE room = $1 AND "offset" < $2 ORDER BY "offset" DESC LIMIT $3
-- is a backward scan of this index.
CREATE INDEX messages_room_offset ON messages (room, "offset");
