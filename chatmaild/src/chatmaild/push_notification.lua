-- Dovecot push_notification_lua driver, loaded by LMTP only:
--   protocol lmtp { mail_plugins = $mail_plugins mail_lua notify push_notification push_notification_lua }
--   plugin { push_notification_driver = lua:file=/etc/dovecot/push_notification.lua }
--
-- For every delivered message that the account did not send to itself, set the private
-- metadata entry /private/messagenew on the mailbox. Dovecot writes it through
-- mail_attribute_dict to chatmail-metadata, which queues the push notifications.
-- Self-sent mail (multi-device sync) is skipped: the sending device is already awake.

function dovecot_lua_notify_begin_txn(user)
  return user
end

function dovecot_lua_notify_event_message_new(user, event)
  local from = string.lower(event.from_address or "")
  if from == string.lower(user.username) then
    return
  end
  local mailbox = user:mailbox(event.mailbox)
  -- The attribute API needs an opened mailbox (without one Dovecot asserts), not a synced
  -- one: IMAP's own SETMETADATA only opens it too. A sync would rescan the maildir on every
  -- delivery (0.3-0.4 ms of CPU per message in bench/lmtp_bench.py). Free it even when a
  -- step fails.
  local ok, err = pcall(function()
    mailbox:open()
    mailbox:metadata_set("/private/messagenew", "")
  end)
  mailbox:free()
  if not ok then
    error(err)
  end
end

function dovecot_lua_notify_end_txn(ctx, success)
end
