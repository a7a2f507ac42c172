# Exactly once (RFC 7352 "duplicate"), run by LMTP before anything else for every recipient.
# A retry of a message that was already stored (a crash between storing and the 250 reaching
# the sender, or a client that resends after a lost reply) is dropped here. Key: envelope
# sender + Message-ID, so nobody can suppress another sender's message by reusing its
# Message-ID. Tracked per recipient for two hours: chatmail relays retry at most 60 s apart,
# and Postfix elsewhere at most 4000 s apart (maximal_backoff_time). Without a Message-ID
# the test is skipped and the message is stored. Written by cmdeploy; compiled at deploy.
require ["duplicate", "variables", "envelope"];

if header :matches "Message-ID" "?*" {
  set "mid" "${0}";
  set "from" "";
  if envelope :matches "from" "*" {
    set "from" "${1}";
  }
  if duplicate :uniqueid "${from} ${mid}" :seconds 7200 {
    discard;
    stop;
  }
}
